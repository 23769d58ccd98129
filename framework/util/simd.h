#pragma once
// RECSYS_CLONES: build a hand-written loop for AVX-512 and AVX2 as well as the baseline x86-64
// ISA; the dynamic loader picks the best the CPU has (GCC target_clones, an ifunc). Functions
// only, not templates. Other compilers and architectures get the baseline build.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RECSYS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RECSYS_CLONES
#endif
