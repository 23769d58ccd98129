#pragma once
// RECSYS_CLONES: build a hand-written loop for AVX-512 and AVX2 as well as the baseline x86-64
// ISA; the dynamic loader picks the best the CPU has (GCC target_clones, an ifunc). Functions
// only, not templates. Other compilers and architectures get the baseline build. When the
// translation unit already targets AVX-512 (the native build, RECSYS_NATIVE) there is nothing
// better to pick, and plain functions can be inlined into their callers' loops (an ifunc call
// per row of 16 floats costs more than the row's arithmetic).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__AVX512F__)
#define RECSYS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RECSYS_CLONES
#endif
