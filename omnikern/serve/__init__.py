"""NVIDIA Triton Inference Server model repositories, the server process and clients (issue: serving)."""

__all__: list[str] = []
