import sys

from omnikern.cli import main

sys.exit(main())
