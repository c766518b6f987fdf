// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011): a counter-based generator. The random numbers of element i are a pure
// function of (seed, counter = offset + i), so the CPU and the GPU produce the
// same tensor for the same seed, whatever the thread layout.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SESSA_HOST_DEVICE __host__ __device__
#else
#define SESSA_HOST_DEVICE
#endif

namespace sessa::philox {

struct Block {
  uint32_t v[4];
};

SESSA_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = uint64_t(a) * b;
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// Ten rounds of the Philox bijection over counter `ctr` with key `seed`.
SESSA_HOST_DEVICE inline Block draw(uint64_t seed, uint64_t ctr) {
  uint32_t c0 = uint32_t(ctr), c1 = uint32_t(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// 53 random bits as a double in [0, 1).
SESSA_HOST_DEVICE inline double to_unit(uint32_t hi, uint32_t lo) {
  return double(((uint64_t(hi) << 32) | lo) >> 11) * (1.0 / 9007199254740992.0);
}

SESSA_HOST_DEVICE inline double uniform(uint64_t seed, uint64_t ctr) {
  Block b = draw(seed, ctr);
  return to_unit(b.v[0], b.v[1]);
}

// Standard normal by Box-Muller on the block's two 53-bit uniforms.
SESSA_HOST_DEVICE inline double normal(uint64_t seed, uint64_t ctr) {
  Block b = draw(seed, ctr);
  double u1 = 1.0 - to_unit(b.v[0], b.v[1]);  // (0, 1]: log is finite
  double u2 = to_unit(b.v[2], b.v[3]);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

}  // namespace sessa::philox
