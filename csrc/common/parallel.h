// A tiny fork-join helper for batch work: split [0, n) into contiguous chunks, one per thread.
// Results must not depend on the thread count, so callers write each item's result to its own slot.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace omnikern {

/// Number of threads to use: `requested` if > 0, else the hardware concurrency (at least 1).
inline int resolve_num_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

/// Calls fn(begin, end) on disjoint contiguous chunks covering [0, n), using up to `num_threads`
/// threads (0 = all cores). Chunks smaller than `min_chunk` items are not split further. The first
/// exception thrown by any chunk is rethrown on the calling thread after all threads have joined.
template <typename Fn>
void parallel_for(size_t n, int num_threads, size_t min_chunk, Fn&& fn) {
  if (n == 0) return;
  const size_t max_threads = (n + std::max<size_t>(min_chunk, 1) - 1) / std::max<size_t>(min_chunk, 1);
  const size_t threads = std::min<size_t>(static_cast<size_t>(resolve_num_threads(num_threads)), max_threads);
  if (threads <= 1) {
    fn(size_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(threads);
  workers.reserve(threads - 1);
  const size_t chunk = (n + threads - 1) / threads;
  for (size_t t = 1; t < threads; ++t) {
    const size_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    workers.emplace_back([&, t, begin, end] {
      try {
        fn(begin, end);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  try {
    fn(size_t{0}, std::min(n, chunk));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& w : workers) w.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace omnikern
