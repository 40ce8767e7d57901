// A minimal assertion helper for the ctest executables: no framework needed.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace omnikern::testing {
inline int& failures() {
  static int count = 0;
  return count;
}
}  // namespace omnikern::testing

#define OMNIKERN_CHECK(cond)                                                   \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++omnikern::testing::failures();                                         \
    }                                                                          \
  } while (0)

#define OMNIKERN_CHECK_EQ(a, b)                                                      \
  do {                                                                               \
    const auto va_ = (a);                                                            \
    const auto vb_ = (b);                                                            \
    if (!(va_ == vb_)) {                                                             \
      std::fprintf(stderr, "%s:%d: check failed: %s == %s (%lld vs %lld)\n", __FILE__, \
                   __LINE__, #a, #b, static_cast<long long>(va_), static_cast<long long>(vb_)); \
      ++omnikern::testing::failures();                                               \
    }                                                                                \
  } while (0)

#define OMNIKERN_TEST_MAIN()                                              \
  int main() {                                                            \
    run_tests();                                                          \
    if (omnikern::testing::failures() == 0) std::printf("all checks passed\n"); \
    return omnikern::testing::failures() == 0 ? EXIT_SUCCESS : EXIT_FAILURE; \
  }
