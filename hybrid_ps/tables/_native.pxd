# The C helpers every compiled kernel shares: splitmix64, range reduction, software prefetch.

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    /* splitmix64's finaliser (Steele, Lea & Flood 2014): the same function as hybrid_ps.partition.mix64 */
    static inline uint64_t hps_mix64(uint64_t z) {
        z += 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    /* floor(h * n / 2**64): maps a 64-bit hash onto [0, n) keeping its order (Lemire's fastrange) */
    static inline uint64_t hps_fastrange(uint64_t h, uint64_t n) {
        return (uint64_t)(((unsigned __int128)h * n) >> 64);
    }
    #define hps_ctz(x) __builtin_ctz(x)
    #define hps_prefetch_write(p) __builtin_prefetch((const void *)(p), 1, 3)
    #define hps_prefetch_read(p) __builtin_prefetch((const void *)(p), 0, 3)
    """
    uint64_t hps_mix64(uint64_t z) nogil
    uint64_t hps_fastrange(uint64_t h, uint64_t n) nogil
    int hps_ctz(unsigned int x) nogil
    void hps_prefetch_write(const void *p) nogil
    void hps_prefetch_read(const void *p) nogil
