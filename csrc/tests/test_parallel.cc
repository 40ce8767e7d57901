#include "common/parallel.h"

#include <atomic>
#include <stdexcept>
#include <vector>

#include "tests/check.h"

static void run_tests() {
  for (int threads : {0, 1, 2, 7}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{5}, size_t{1000}}) {
      std::vector<int> hits(n, 0);
      omnikern::parallel_for(n, threads, 1, [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) ++hits[i];
      });
      for (size_t i = 0; i < n; ++i) OMNIKERN_CHECK_EQ(hits[i], 1);
    }
  }
  bool thrown = false;
  try {
    omnikern::parallel_for(100, 4, 1, [](size_t b, size_t) {
      if (b > 0) throw std::invalid_argument("boom");
    });
  } catch (const std::invalid_argument&) {
    thrown = true;
  }
  OMNIKERN_CHECK(thrown);
}

OMNIKERN_TEST_MAIN()
