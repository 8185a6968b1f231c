/* The PLAID stages as compiled CPU loops: medcolbert's fast path on CPU (search/cpu_kernel.py loads it).
 *
 * Built ahead of time by setuptools when the package is installed (an optional extension: without a C compiler
 * the install still succeeds and search runs the torch engine, which is also the CUDA path and the reference
 * these loops are tested against). Nothing here is compiled at import or at first use.
 *
 * The functions take plain pointers and are called through ctypes; the Python module below exists only so
 * that the shared library is found and importable like any other extension.
 */
/* MC_KERNEL_ONLY: the loops alone, without Python's headers (a cross-compiler's check of the portable build). */
#ifndef MC_KERNEL_ONLY
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Three builds of every hot loop in one library, chosen at run time by what the CPU supports: AVX-512, AVX2 with
 * FMA, and portable C (plain loops with `omp simd` hints that any compiler can vectorise for its target: SSE2,
 * NEON, ...). The generic loop bodies are always-inlined into one wrapper per instruction set, so each is
 * compiled for that set; the hand-written intrinsic loops (the exact stage's lookups, decompression) exist for
 * AVX-512 and AVX2. mc_set_isa() caps the level (tests force each path; MEDCOLBERT_PLAID_ISA in Python). */
#if defined(__x86_64__) && defined(__GNUC__)
#define MC_X86 1
#include <immintrin.h>
#define MC_T512 __attribute__((target("avx512f")))
#define MC_T256 __attribute__((target("avx2,fma")))
#endif
/* On 64-bit ARM, NEON is part of the base architecture: level 1 there is the hand-written NEON lookup loop (the
 * other loops are the portable ones, which the compiler vectorises with NEON). */
#if defined(__aarch64__) && defined(__ARM_NEON)
#define MC_ARM 1
#include <arm_neon.h>
#endif
/* GCC's unroll-and-jam fuses two documents' centroid rows into one scalar loop in stage 3 (measured 3x slower
 * than the vectorized row max it replaces). */
#if defined(__GNUC__) && !defined(__clang__)
#define MC_NO_JAM __attribute__((optimize("no-loop-unroll-and-jam")))
#else
#define MC_NO_JAM
#endif

/* Levels per architecture, narrowest first: x86-64 portable / AVX2+FMA / AVX-512; AArch64 portable / NEON. */
enum { MC_ISA_PORTABLE = 0, MC_ISA_AVX2 = 1, MC_ISA_AVX512 = 2, MC_ISA_NEON = 1 };

/* The widest level this CPU runs. */
static int64_t mc_supported(void) {
#ifdef MC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return MC_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return MC_ISA_AVX2;
#endif
#ifdef MC_ARM
    return MC_ISA_NEON;
#endif
    return MC_ISA_PORTABLE;
}

/* The level in use (-1 until first asked). A plain int: set from Python between calls, read by each call. */
static int64_t mc_level = -1;

int64_t mc_isa(void) {
    if (mc_level < 0) mc_level = mc_supported();
    return mc_level;
}

/* Caps the level at `level` (within what the CPU runs; a negative level means the widest); returns the level now
 * in use. */
int64_t mc_set_isa(int64_t level) {
    int64_t top = mc_supported();
    mc_level = level < 0 || level > top ? top : level;
    return mc_level;
}

/* Bumped whenever a loop here gets faster or slower: each machine's remembered choice of exact stage is keyed by
 * it (search/engine.py), so a new kernel is measured again rather than judged by the old one's timings. */
#define MC_REVISION 4

int64_t mc_revision(void) { return MC_REVISION; }

typedef struct {
    float score;
    int32_t pos;
} scored_t;

/* Reorders a[0..n) so that a[0..k) hold the k highest scores (in no particular order). */
static void select_top(scored_t *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, target = k - 1;
    if (k <= 0 || k >= n) return;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2].score;
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i].score > pivot) i++;
            while (a[j].score < pivot) j--;
            if (i <= j) {
                scored_t t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break;
    }
}

/* Per query token, the ncells best centroids (into cells[Lq * ncells]); per centroid, its best score.
 * floor[j] is token j's current ncells-th best score: a row that beats no token's floor (almost every row, after
 * the first few) costs one vectorized pass, and only the others take the scalar insertion. */
static inline void centroid_pass(const float *table, int64_t C, int64_t Lq, int64_t ncells, int32_t *cells, float *best,
                                 float *rowmax, float *floor) {
    for (int64_t x = 0; x < Lq * ncells; x++) {
        best[x] = -INFINITY;
        cells[x] = 0;
    }
    for (int64_t j = 0; j < Lq; j++) floor[j] = -INFINITY;
    for (int64_t c = 0; c < C; c++) {
        const float *row = table + c * Lq;
        float m = -INFINITY;
        int any = 0;
        /* The maximum is the same in any order, so the loop may be vectorized as a reduction. */
        _Pragma("omp simd reduction(max:m) reduction(|:any)")
        for (int64_t j = 0; j < Lq; j++) {
            m = row[j] > m ? row[j] : m;
            any |= row[j] > floor[j];
        }
        rowmax[c] = m;
        if (!any) continue;
        for (int64_t j = 0; j < Lq; j++) {
            float v = row[j];
            float *b = best + j * ncells;
            int32_t *id = cells + j * ncells;
            if (v <= b[ncells - 1]) continue;
            int64_t p = ncells - 1;  /* insertion into the token's short sorted list */
            while (p > 0 && b[p - 1] < v) {
                b[p] = b[p - 1];
                id[p] = id[p - 1];
                p--;
            }
            b[p] = v;
            id[p] = (int32_t)c;
            floor[j] = b[ncells - 1];
        }
    }
}

/* Element-wise running max of one centroid row into a document's accumulator. Inlined into a loop over rows,
 * the compiler reads it as a floating-point reduction it may not reorder and leaves it scalar; each element's
 * max is independent of the others, which `omp simd` tells it. */
static inline void max_into(float *restrict acc, const float *restrict row, int64_t Lq) {
    _Pragma("omp simd")
    for (int64_t j = 0; j < Lq; j++) acc[j] = row[j] > acc[j] ? row[j] : acc[j];
}

static inline float sum_of(const float *x, int64_t n) {
    float s = 0.0f;
    for (int64_t j = 0; j < n; j++) s += x[j];
    return s;
}

/* Stages 1-3: candidates from the top ncells centroids per query token; if more than ndocs, the ndocs best
 * by MaxSim over their centroids that score >= threshold (others count 0); if more than n_exact, the n_exact
 * best by MaxSim over all their centroids (floored at 0, like the pruned stage). With exact_share > 0, n_exact
 * is a minimum and the target is the survivors' count / exact_share: the exact stage's size follows what the
 * first stages found (colbert-ai's ndocs / 4 where stage 2 keeps ndocs; fewer where fewer were found). table is [C + 1, Lq] centroid
 * scores. slots is a [num_docs] scratch array of -1s, left as it was found. The survivors go to out (capacity
 * num_docs); returns their number, or -1 when out of memory. The helpers above are inlined into each
 * instruction-set clone of this function. */
static inline __attribute__((always_inline)) int64_t
candidates(const float *table, int64_t C, int64_t Lq, const int64_t *ivf_offsets, const int32_t *ivf_docs,
           const int64_t *pair_offsets, const int32_t *pair_codes, const uint8_t *deleted, int64_t ncells,
           float threshold, int64_t ndocs, int64_t n_exact, int64_t exact_share, int32_t *slots, int32_t *out) {
    if (ncells > C) ncells = C;
    int32_t *cells = malloc(sizeof(int32_t) * Lq * ncells);
    float *best = malloc(sizeof(float) * Lq * ncells);
    float *rowmax = malloc(sizeof(float) * C);
    float *floor = malloc(sizeof(float) * Lq);
    if (!cells || !best || !rowmax || !floor) {
        free(cells), free(best), free(rowmax), free(floor);
        return -1;
    }
    centroid_pass(table, C, Lq, ncells, cells, best, rowmax, floor);
    free(floor);

    int64_t n = 0;
    for (int64_t x = 0; x < Lq * ncells; x++) {
        int32_t c = cells[x];
        for (int64_t p = ivf_offsets[c]; p < ivf_offsets[c + 1]; p++) {
            int32_t d = ivf_docs[p];
            if (slots[d] >= 0 || (deleted && deleted[d])) continue;
            slots[d] = (int32_t)n;
            out[n++] = d;
        }
    }
    free(cells);
    free(best);

    /* Stage 2 scores every candidate; the slots map is no longer needed after it and is reset (once, on every
     * path) before the survivors are compacted into out. */
    scored_t *ranked = NULL;
    int failed = 0;
    if (n > ndocs) {
        float *acc = calloc((size_t)(n * Lq), sizeof(float));
        ranked = malloc(sizeof(scored_t) * n);
        if (!acc || !ranked) {
            failed = 1;
        } else {
            /* Walk the inverted lists of the centroids that pass the threshold: their length, not the number
             * of candidates' centroids, bounds the work (PLAID's pruning). */
            for (int64_t c = 0; c < C; c++) {
                if (!(rowmax[c] >= threshold)) continue;
                const float *row = table + c * Lq;
                for (int64_t p = ivf_offsets[c]; p < ivf_offsets[c + 1]; p++) {
                    int32_t s = slots[ivf_docs[p]];
                    if (s >= 0) max_into(acc + (int64_t)s * Lq, row, Lq);
                }
            }
            for (int64_t s = 0; s < n; s++) {
                ranked[s].score = sum_of(acc + s * Lq, Lq);
                ranked[s].pos = (int32_t)s;
            }
            select_top(ranked, n, ndocs);
        }
        free(acc);
    }
    free(rowmax);
    for (int64_t s = 0; s < n; s++) slots[out[s]] = -1;
    if (failed) {
        free(ranked);
        return -1;
    }
    if (ranked) {
        /* ranked holds positions into out: gather through a copy so that no survivor is overwritten. */
        for (int64_t s = 0; s < ndocs; s++) ranked[s].pos = out[ranked[s].pos];
        for (int64_t s = 0; s < ndocs; s++) out[s] = ranked[s].pos;
        n = ndocs;
        free(ranked);
    }

    if (exact_share > 0 && n / exact_share > n_exact) n_exact = n / exact_share;
    if (n > n_exact) {
        float *acc = malloc(sizeof(float) * Lq);
        scored_t *ranked = malloc(sizeof(scored_t) * n);
        if (!acc || !ranked) {
            free(acc), free(ranked);
            return -1;
        }
        for (int64_t s = 0; s < n; s++) {
            int32_t d = out[s];
            memset(acc, 0, sizeof(float) * Lq);
            for (int64_t p = pair_offsets[d]; p < pair_offsets[d + 1]; p++)
                max_into(acc, table + (int64_t)pair_codes[p] * Lq, Lq);
            ranked[s].score = sum_of(acc, Lq);
            ranked[s].pos = d;
        }
        select_top(ranked, n, n_exact);
        for (int64_t s = 0; s < n_exact; s++) out[s] = ranked[s].pos;
        n = n_exact;
        free(acc);
        free(ranked);
    }
    return n;
}

/* One wrapper per instruction set around an always-inlined body (NAME##_body), and the dispatch between them. */
#ifdef MC_X86
#define MC_DISPATCH(CALL)                                                                                           \
    switch (mc_isa()) {                                                                                             \
    case MC_ISA_AVX512: CALL(avx512); break;                                                                        \
    case MC_ISA_AVX2: CALL(avx2); break;                                                                            \
    default: CALL(portable);                                                                                        \
    }
#else
#define MC_DISPATCH(CALL) CALL(portable);
#endif

#define MC_CANDIDATES_ARGS                                                                                          \
    const float *table, int64_t C, int64_t Lq, const int64_t *ivf_offsets, const int32_t *ivf_docs,                \
        const int64_t *pair_offsets, const int32_t *pair_codes, const uint8_t *deleted, int64_t ncells,            \
        float threshold, int64_t ndocs, int64_t n_exact, int64_t exact_share, int32_t *slots, int32_t *out
/* A copy for the default 32 query tokens, where every per-row loop is a fixed two vectors long (stages 1-3
 * measured 0.62 ms against 0.85 ms without it on SciFact). */
#define MC_CANDIDATES_BODY                                                                                          \
    {                                                                                                               \
        if (Lq == 32)                                                                                               \
            return candidates(table, C, 32, ivf_offsets, ivf_docs, pair_offsets, pair_codes, deleted, ncells,       \
                              threshold, ndocs, n_exact, exact_share, slots, out);                                  \
        return candidates(table, C, Lq, ivf_offsets, ivf_docs, pair_offsets, pair_codes, deleted, ncells,           \
                          threshold, ndocs, n_exact, exact_share, slots, out);                                      \
    }
#ifdef MC_X86
MC_T512 MC_NO_JAM static int64_t candidates_avx512(MC_CANDIDATES_ARGS) MC_CANDIDATES_BODY
MC_T256 MC_NO_JAM static int64_t candidates_avx2(MC_CANDIDATES_ARGS) MC_CANDIDATES_BODY
#endif
MC_NO_JAM static int64_t candidates_portable(MC_CANDIDATES_ARGS) MC_CANDIDATES_BODY

int64_t mc_candidates(MC_CANDIDATES_ARGS) {
    int64_t n = -1;
#define MC_CALL(isa)                                                                                                \
    n = candidates_##isa(table, C, Lq, ivf_offsets, ivf_docs, pair_offsets, pair_codes, deleted, ncells, threshold, \
                         ndocs, n_exact, exact_share, slots, out)
    MC_DISPATCH(MC_CALL)
#undef MC_CALL
    return n;
}

/* Centroid plus dequantized residual of n vectors into out [n, dim], and their norms (at least 1e-12) into
 * norms [n]. Vector r is row rows[r] of codes/packed (row r where rows is NULL). Centroids are read as the
 * index stores them, int8 times a per-centroid scale: the table then fits in L2 cache, and the product is the
 * same float32 value the torch stages compute. byte_table maps (byte position * 256 + byte value) to the
 * per_byte residual values that byte packs. */
static inline __attribute__((always_inline)) void
decompress_any(const int64_t *rows, const int32_t *codes, const uint8_t *packed, int64_t n,
                           const int8_t *centroids, const float *scales, int64_t dim, const float *byte_table,
                           int64_t per_byte, float *out, float *norms) {
    int64_t nbytes = dim / per_byte;
    for (int64_t r = 0; r < n; r++) {
        int64_t row = rows ? rows[r] : r;
        int32_t code = codes[row];
        const int8_t *cen = centroids + (int64_t)code * dim;
        const float scale = scales[code];
        const uint8_t *pk = packed + row * nbytes;
        float *v = out + r * dim;
        for (int64_t i = 0; i < dim; i++) v[i] = (float)cen[i] * scale;
        if (per_byte == 4) {  /* nbits 2, the default: a fixed-size add the compiler unrolls */
            for (int64_t b = 0; b < nbytes; b++) {
                const float *t = byte_table + (b * 256 + pk[b]) * 4;
                for (int i = 0; i < 4; i++) v[b * 4 + i] += t[i];
            }
        } else {
            for (int64_t b = 0; b < nbytes; b++) {
                const float *t = byte_table + (b * 256 + pk[b]) * per_byte;
                for (int64_t i = 0; i < per_byte; i++) v[b * per_byte + i] += t[i];
            }
        }
        /* 16 partial sums: independent lanes the compiler can keep in one vector register. */
        float part[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= dim; i += 16)
            for (int l = 0; l < 16; l++) part[l] += v[i + l] * v[i + l];
        float sq = 0.0f;
        for (; i < dim; i++) sq += v[i] * v[i];
        for (int l = 0; l < 16; l++) sq += part[l];
        float norm = sqrtf(sq);
        norms[r] = norm > 1e-12f ? norm : 1e-12f;
    }
}

#define MC_MAX_DIM 512

/* weights[u][d]: nbits-2 bucket u's value in dimension d, read back from the byte table (dimension 4b + j is field j
 * of byte b, the first field in the high bits). */
static void bucket_weights(const float *byte_table, int64_t dim, float weights[4][MC_MAX_DIM]) {
    for (int64_t d = 0; d < dim; d++)
        for (int u = 0; u < 4; u++)
            weights[u][d] = byte_table[((d / 4) * 256 + (u << (6 - 2 * (d % 4)))) * 4 + d % 4];
}

#ifdef MC_X86
/* decompress_any for nbits 2 with AVX-512, 16 dimensions at a time: each lane picks its bucket weight by two
 * mask blends instead of 32 scattered table reads per vector (about 3x faster here). Same operations in the
 * same order as decompress_any (multiply, then add; 16 partial sums of squares), so the same bits. */
MC_T512 static void decompress_nbits2_avx512(const int64_t *rows, const int32_t *codes, const uint8_t *packed,
                                             int64_t n, const int8_t *centroids, const float *scales, int64_t dim,
                                             const float *byte_table, float *out, float *norms) {
    float weights[4][MC_MAX_DIM];
    bucket_weights(byte_table, dim, weights);
    /* Lane l of a 16-dimension block reads bits shift[l], shift[l] + 1 of the block's 4 bytes (little endian). */
    const __m512i shift = _mm512_setr_epi32(6, 4, 2, 0, 14, 12, 10, 8, 22, 20, 18, 16, 30, 28, 26, 24);
    const __m512i bit0 = _mm512_set1_epi32(1), bit1 = _mm512_set1_epi32(2);
    for (int64_t r = 0; r < n; r++) {
        int64_t row = rows ? rows[r] : r;
        int32_t code = codes[row];
        const int8_t *cen = centroids + (int64_t)code * dim;
        const __m512 scale = _mm512_set1_ps(scales[code]);
        const uint8_t *pk = packed + row * (dim / 4);
        float *v = out + r * dim;
        __m512 squares = _mm512_setzero_ps();
        for (int64_t k = 0; k < dim / 16; k++) {
            uint32_t bits;
            memcpy(&bits, pk + 4 * k, 4);
            __m512i bucket = _mm512_srlv_epi32(_mm512_set1_epi32((int)bits), shift);
            __mmask16 low = _mm512_test_epi32_mask(bucket, bit0), high = _mm512_test_epi32_mask(bucket, bit1);
            __m512 w01 = _mm512_mask_blend_ps(low, _mm512_loadu_ps(weights[0] + 16 * k), _mm512_loadu_ps(weights[1] + 16 * k));
            __m512 w23 = _mm512_mask_blend_ps(low, _mm512_loadu_ps(weights[2] + 16 * k), _mm512_loadu_ps(weights[3] + 16 * k));
            __m512 c = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(cen + 16 * k))));
            __m512 x = _mm512_add_ps(_mm512_mul_ps(c, scale), _mm512_mask_blend_ps(high, w01, w23));
            _mm512_storeu_ps(v + 16 * k, x);
            squares = _mm512_add_ps(squares, _mm512_mul_ps(x, x));
        }
        float part[16];
        _mm512_storeu_ps(part, squares);
        float sq = 0.0f;
        for (int l = 0; l < 16; l++) sq += part[l];
        float norm = sqrtf(sq);
        norms[r] = norm > 1e-12f ? norm : 1e-12f;
    }
}

/* The same with AVX2, 8 dimensions at a time: the lane masks come from a compare (AVX2 has no mask registers)
 * and the sums of squares run in two registers, the even and the odd 8-dimension blocks, which are the low and
 * high halves of decompress_any's 16 partial sums: the same bits again. */
MC_T256 static void decompress_nbits2_avx2(const int64_t *rows, const int32_t *codes, const uint8_t *packed,
                                           int64_t n, const int8_t *centroids, const float *scales, int64_t dim,
                                           const float *byte_table, float *out, float *norms) {
    float weights[4][MC_MAX_DIM];
    bucket_weights(byte_table, dim, weights);
    const __m256i shift = _mm256_setr_epi32(6, 4, 2, 0, 14, 12, 10, 8);
    const __m256i bit0 = _mm256_set1_epi32(1), bit1 = _mm256_set1_epi32(2);
    for (int64_t r = 0; r < n; r++) {
        int64_t row = rows ? rows[r] : r;
        int32_t code = codes[row];
        const int8_t *cen = centroids + (int64_t)code * dim;
        const __m256 scale = _mm256_set1_ps(scales[code]);
        const uint8_t *pk = packed + row * (dim / 4);
        float *v = out + r * dim;
        __m256 squares[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t k = 0; k < dim / 8; k++) {
            uint16_t bits;
            memcpy(&bits, pk + 2 * k, 2);
            __m256i bucket = _mm256_srlv_epi32(_mm256_set1_epi32((int)bits), shift);
            __m256 low = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(bucket, bit0), bit0));
            __m256 high = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(bucket, bit1), bit1));
            __m256 w01 = _mm256_blendv_ps(_mm256_loadu_ps(weights[0] + 8 * k), _mm256_loadu_ps(weights[1] + 8 * k), low);
            __m256 w23 = _mm256_blendv_ps(_mm256_loadu_ps(weights[2] + 8 * k), _mm256_loadu_ps(weights[3] + 8 * k), low);
            int64_t eight;
            memcpy(&eight, cen + 8 * k, 8);
            __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(eight)));
            __m256 x = _mm256_add_ps(_mm256_mul_ps(c, scale), _mm256_blendv_ps(w01, w23, high));
            _mm256_storeu_ps(v + 8 * k, x);
            squares[k & 1] = _mm256_add_ps(squares[k & 1], _mm256_mul_ps(x, x));
        }
        float part[16];
        _mm256_storeu_ps(part, squares[0]);
        _mm256_storeu_ps(part + 8, squares[1]);
        float sq = 0.0f;
        for (int l = 0; l < 16; l++) sq += part[l];
        float norm = sqrtf(sq);
        norms[r] = norm > 1e-12f ? norm : 1e-12f;
    }
}
#endif

#define MC_DECOMPRESS_ARGS                                                                                          \
    const int64_t *rows, const int32_t *codes, const uint8_t *packed, int64_t n, const int8_t *centroids,          \
        const float *scales, int64_t dim, const float *byte_table, int64_t per_byte, float *out, float *norms
#define MC_DECOMPRESS_BODY                                                                                          \
    { decompress_any(rows, codes, packed, n, centroids, scales, dim, byte_table, per_byte, out, norms); }
#ifdef MC_X86
MC_T512 static void decompress_avx512(MC_DECOMPRESS_ARGS) MC_DECOMPRESS_BODY
MC_T256 static void decompress_avx2(MC_DECOMPRESS_ARGS) MC_DECOMPRESS_BODY
#endif
static void decompress_portable(MC_DECOMPRESS_ARGS) MC_DECOMPRESS_BODY

/* Centroid plus residual of n vectors (decompress_any), through the intrinsic loops where they apply. */
void mc_decompress(MC_DECOMPRESS_ARGS) {
#ifdef MC_X86
    if (per_byte == 4 && dim % 16 == 0 && dim <= MC_MAX_DIM && mc_isa() >= MC_ISA_AVX2) {
        if (mc_isa() == MC_ISA_AVX512)
            decompress_nbits2_avx512(rows, codes, packed, n, centroids, scales, dim, byte_table, out, norms);
        else
            decompress_nbits2_avx2(rows, codes, packed, n, centroids, scales, dim, byte_table, out, norms);
        return;
    }
#endif
#define MC_CALL(isa) decompress_##isa(rows, codes, packed, n, centroids, scales, dim, byte_table, per_byte, out, norms)
    MC_DISPATCH(MC_CALL)
#undef MC_CALL
}

/* Per document (consecutive groups of lens[d] rows of sim [rows, Lq], row r divided by norms[r] when norms is
 * given): the sum over columns of the column maxima, into out [ndocs]. */
#define MC_SEGMENT_ARGS const float *sim, int64_t Lq, const float *norms, const int64_t *lens, int64_t ndocs, float *out
#define MC_SEGMENT_BODY                                                                                             \
    {                                                                                                               \
        float acc[Lq > 0 ? Lq : 1];                                                                                 \
        int64_t r = 0;                                                                                              \
        for (int64_t d = 0; d < ndocs; d++) {                                                                       \
            for (int64_t j = 0; j < Lq; j++) acc[j] = -INFINITY;                                                    \
            for (int64_t e = 0; e < lens[d]; e++, r++) {                                                            \
                const float *row = sim + r * Lq;                                                                    \
                float nr = norms ? norms[r] : 1.0f;                                                                 \
                _Pragma("omp simd") for (int64_t j = 0; j < Lq; j++) {                                              \
                    float x = row[j] / nr;                                                                          \
                    acc[j] = x > acc[j] ? x : acc[j];                                                               \
                }                                                                                                   \
            }                                                                                                       \
            out[d] = lens[d] > 0 ? sum_of(acc, Lq) : -INFINITY;                                                     \
        }                                                                                                           \
    }
#ifdef MC_X86
MC_T512 static void segment_maxsim_avx512(MC_SEGMENT_ARGS) MC_SEGMENT_BODY
MC_T256 static void segment_maxsim_avx2(MC_SEGMENT_ARGS) MC_SEGMENT_BODY
#endif
static void segment_maxsim_portable(MC_SEGMENT_ARGS) MC_SEGMENT_BODY

void mc_segment_maxsim(MC_SEGMENT_ARGS) {
#define MC_CALL(isa) segment_maxsim_##isa(sim, Lq, norms, lens, ndocs, out)
    MC_DISPATCH(MC_CALL)
#undef MC_CALL
}

/* Exact MaxSim scored from the compressed vectors, without rebuilding them (WARP's idea, here exact): vector r's
 * score for query token j is (table[codes[r]][j] + sum over its residual bytes b of lut[b][packed[r][b]][j]) / norms[r].
 * table [C + 1, Lq] holds the centroids' scores (stage 1 computed it already); lut [nbytes, 256, Lw] each residual
 * byte value's dot products with the query's dimensions it packs, in rows of Lw >= Lq floats (the columns past Lq
 * zero: the vector loops below read whole 16-float blocks); norms the decompressed vectors' norms. The same value as
 * decompress-then-multiply up to float rounding order. Document d is rows starts[d] .. starts[d] + lens[d] of
 * codes/packed/norms; out [ndocs] gets the sum over tokens of the max over its rows. */
static inline __attribute__((always_inline)) void
exact_lut(const float *table, int64_t Lq, const float *lut, int64_t Lw, int64_t nbytes, const int32_t *codes,
          const uint8_t *packed, const float *norms, const int64_t *starts, const int64_t *lens, int64_t ndocs,
          float *out) {
    float acc[Lq > 0 ? Lq : 1], s[Lq > 0 ? Lq : 1];
    for (int64_t d = 0; d < ndocs; d++) {
        for (int64_t j = 0; j < Lq; j++) acc[j] = -INFINITY;
        for (int64_t r = starts[d]; r < starts[d] + lens[d]; r++) {
            const float *c = table + (int64_t)codes[r] * Lq;
            const uint8_t *pk = packed + r * nbytes;
            _Pragma("omp simd")
            for (int64_t j = 0; j < Lq; j++) s[j] = c[j];
            for (int64_t b = 0; b < nbytes; b++) {
                const float *restrict t = lut + ((b << 8) + pk[b]) * Lw;
                _Pragma("omp simd")
                for (int64_t j = 0; j < Lq; j++) s[j] += t[j];
            }
            const float nr = norms[r];
            _Pragma("omp simd")
            for (int64_t j = 0; j < Lq; j++) {
                float x = s[j] / nr;
                acc[j] = x > acc[j] ? x : acc[j];
            }
        }
        out[d] = lens[d] > 0 ? sum_of(acc, Lq) : -INFINITY;
    }
}

#ifdef MC_X86
/* exact_lut with AVX-512 for any query length up to 128: NB blocks of 16 query tokens held in registers (the last
 * block's centroid scores read under a mask; its lookup columns past Lq are zero), two independent sums per block
 * so that successive bytes' adds do not wait on one another. The scalar loop above keeps its running sums in
 * memory and took 4-5x longer for queries of 33-65 tokens (2-core Xeon, SciFact). NB is a constant at each call,
 * so the arrays below live in registers (3 x NB of the 32). */
MC_T512 static inline __attribute__((always_inline)) void
exact_lut_blocks(const int NB, const float *table, int64_t Lq, const float *lut, int64_t nbytes,
                 const int32_t *codes, const uint8_t *packed, const float *norms, const int64_t *starts,
                 const int64_t *lens, int64_t ndocs, float *out) {
    const int64_t Lw = 16 * NB;
    const __mmask16 tail = (Lq % 16) ? (__mmask16)((1u << (Lq % 16)) - 1u) : (__mmask16)0xFFFF;
    for (int64_t d = 0; d < ndocs; d++) {
        __m512 acc[NB];
        for (int i = 0; i < NB; i++) acc[i] = _mm512_set1_ps(-INFINITY);
        for (int64_t r = starts[d]; r < starts[d] + lens[d]; r++) {
            const float *c = table + (int64_t)codes[r] * Lq;
            const uint8_t *pk = packed + r * nbytes;
            __m512 s0[NB], s1[NB];
            for (int i = 0; i < NB; i++) {
                s0[i] = i == NB - 1 ? _mm512_maskz_loadu_ps(tail, c + 16 * i) : _mm512_loadu_ps(c + 16 * i);
                s1[i] = _mm512_setzero_ps();
            }
            int64_t b = 0;
            for (; b + 2 <= nbytes; b += 2) {
                const float *t0 = lut + ((b << 8) + pk[b]) * Lw, *t1 = lut + (((b + 1) << 8) + pk[b + 1]) * Lw;
                for (int i = 0; i < NB; i++) {
                    s0[i] = _mm512_add_ps(s0[i], _mm512_loadu_ps(t0 + 16 * i));
                    s1[i] = _mm512_add_ps(s1[i], _mm512_loadu_ps(t1 + 16 * i));
                }
            }
            for (; b < nbytes; b++) {
                const float *t = lut + ((b << 8) + pk[b]) * Lw;
                for (int i = 0; i < NB; i++) s0[i] = _mm512_add_ps(s0[i], _mm512_loadu_ps(t + 16 * i));
            }
            const __m512 nr = _mm512_set1_ps(norms[r]);
            for (int i = 0; i < NB; i++) acc[i] = _mm512_max_ps(acc[i], _mm512_div_ps(_mm512_add_ps(s0[i], s1[i]), nr));
        }
        float part[16 * NB];
        for (int i = 0; i < NB; i++) _mm512_storeu_ps(part + 16 * i, acc[i]);
        out[d] = lens[d] > 0 ? sum_of(part, Lq) : -INFINITY;
    }
}

/* The same with AVX2: NB blocks of 8 query tokens (16 registers: queries of up to 40 tokens stay in them, longer
 * ones spill the running sums to the L1 cache, still far fewer loads and stores than the portable loop), the last
 * block's centroid scores read under a mask. */
MC_T256 static inline __attribute__((always_inline)) void
exact_lut_blocks8(const int NB, const float *table, int64_t Lq, const float *lut, int64_t nbytes,
                  const int32_t *codes, const uint8_t *packed, const float *norms, const int64_t *starts,
                  const int64_t *lens, int64_t ndocs, float *out) {
    const int64_t Lw = 8 * NB;
    const int rem = (int)(Lq % 8);
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem ? rem : 8), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t d = 0; d < ndocs; d++) {
        __m256 acc[NB];
        for (int i = 0; i < NB; i++) acc[i] = _mm256_set1_ps(-INFINITY);
        for (int64_t r = starts[d]; r < starts[d] + lens[d]; r++) {
            const float *c = table + (int64_t)codes[r] * Lq;
            const uint8_t *pk = packed + r * nbytes;
            __m256 s0[NB], s1[NB];
            for (int i = 0; i < NB; i++) {
                s0[i] = i == NB - 1 ? _mm256_maskload_ps(c + 8 * i, tail) : _mm256_loadu_ps(c + 8 * i);
                s1[i] = _mm256_setzero_ps();
            }
            int64_t b = 0;
            for (; b + 2 <= nbytes; b += 2) {
                const float *t0 = lut + ((b << 8) + pk[b]) * Lw, *t1 = lut + (((b + 1) << 8) + pk[b + 1]) * Lw;
                for (int i = 0; i < NB; i++) {
                    s0[i] = _mm256_add_ps(s0[i], _mm256_loadu_ps(t0 + 8 * i));
                    s1[i] = _mm256_add_ps(s1[i], _mm256_loadu_ps(t1 + 8 * i));
                }
            }
            for (; b < nbytes; b++) {
                const float *t = lut + ((b << 8) + pk[b]) * Lw;
                for (int i = 0; i < NB; i++) s0[i] = _mm256_add_ps(s0[i], _mm256_loadu_ps(t + 8 * i));
            }
            const __m256 nr = _mm256_set1_ps(norms[r]);
            for (int i = 0; i < NB; i++) acc[i] = _mm256_max_ps(acc[i], _mm256_div_ps(_mm256_add_ps(s0[i], s1[i]), nr));
        }
        float part[8 * NB];
        for (int i = 0; i < NB; i++) _mm256_storeu_ps(part + 8 * i, acc[i]);
        out[d] = lens[d] > 0 ? sum_of(part, Lq) : -INFINITY;
    }
}

#define MC_LUT_ARGS                                                                                                 \
    const float *table, int64_t Lq, const float *lut, int64_t nbytes, const int32_t *codes, const uint8_t *packed,  \
        const float *norms, const int64_t *starts, const int64_t *lens, int64_t ndocs, float *out
#define MC_LUT_BLOCKS(NB)                                                                                           \
    MC_T512 static void exact_lut_b##NB(MC_LUT_ARGS) {                                                              \
        exact_lut_blocks(NB, table, Lq, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);              \
    }
#define MC_LUT_BLOCKS8(NB)                                                                                          \
    MC_T256 static void exact_lut8_b##NB(MC_LUT_ARGS) {                                                             \
        exact_lut_blocks8(NB, table, Lq, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);             \
    }
MC_LUT_BLOCKS(1) MC_LUT_BLOCKS(2) MC_LUT_BLOCKS(3) MC_LUT_BLOCKS(4)
MC_LUT_BLOCKS(5) MC_LUT_BLOCKS(6) MC_LUT_BLOCKS(7) MC_LUT_BLOCKS(8)
MC_LUT_BLOCKS8(1) MC_LUT_BLOCKS8(2) MC_LUT_BLOCKS8(3) MC_LUT_BLOCKS8(4)
MC_LUT_BLOCKS8(5) MC_LUT_BLOCKS8(6) MC_LUT_BLOCKS8(7) MC_LUT_BLOCKS8(8)
MC_LUT_BLOCKS8(9) MC_LUT_BLOCKS8(10) MC_LUT_BLOCKS8(11) MC_LUT_BLOCKS8(12)
MC_LUT_BLOCKS8(13) MC_LUT_BLOCKS8(14) MC_LUT_BLOCKS8(15) MC_LUT_BLOCKS8(16)
typedef void (*mc_lut_fn)(MC_LUT_ARGS);

/* exact_lut for 32 query tokens (two 16-lane halves) and an even number of residual bytes, with AVX-512: four
 * independent sums per half, so that the adds of successive bytes do not wait on one another (the one-sum loop
 * is bound by add latency, not by the table reads). */
MC_T512 static void exact_lut32_avx512(const float *table, const float *lut, int64_t nbytes, const int32_t *codes,
                                       const uint8_t *packed, const float *norms, const int64_t *starts,
                                       const int64_t *lens, int64_t ndocs, float *out) {
    for (int64_t d = 0; d < ndocs; d++) {
        __m512 acc0 = _mm512_set1_ps(-INFINITY), acc1 = acc0;
        for (int64_t r = starts[d]; r < starts[d] + lens[d]; r++) {
            const float *c = table + (int64_t)codes[r] * 32;
            const uint8_t *pk = packed + r * nbytes;
            __m512 a0 = _mm512_loadu_ps(c), a1 = _mm512_loadu_ps(c + 16);
            __m512 b0 = _mm512_setzero_ps(), b1 = b0, e0 = b0, e1 = b0, f0 = b0, f1 = b0;
            int64_t b = 0;
            for (; b + 4 <= nbytes; b += 4) {
                const float *t0 = lut + ((b << 8) + pk[b]) * 32, *t1 = lut + (((b + 1) << 8) + pk[b + 1]) * 32;
                const float *t2 = lut + (((b + 2) << 8) + pk[b + 2]) * 32, *t3 = lut + (((b + 3) << 8) + pk[b + 3]) * 32;
                a0 = _mm512_add_ps(a0, _mm512_loadu_ps(t0));
                a1 = _mm512_add_ps(a1, _mm512_loadu_ps(t0 + 16));
                b0 = _mm512_add_ps(b0, _mm512_loadu_ps(t1));
                b1 = _mm512_add_ps(b1, _mm512_loadu_ps(t1 + 16));
                e0 = _mm512_add_ps(e0, _mm512_loadu_ps(t2));
                e1 = _mm512_add_ps(e1, _mm512_loadu_ps(t2 + 16));
                f0 = _mm512_add_ps(f0, _mm512_loadu_ps(t3));
                f1 = _mm512_add_ps(f1, _mm512_loadu_ps(t3 + 16));
            }
            for (; b < nbytes; b++) {
                const float *t = lut + ((b << 8) + pk[b]) * 32;
                a0 = _mm512_add_ps(a0, _mm512_loadu_ps(t));
                a1 = _mm512_add_ps(a1, _mm512_loadu_ps(t + 16));
            }
            const __m512 nr = _mm512_set1_ps(norms[r]);
            __m512 s0 = _mm512_div_ps(_mm512_add_ps(_mm512_add_ps(a0, b0), _mm512_add_ps(e0, f0)), nr);
            __m512 s1 = _mm512_div_ps(_mm512_add_ps(_mm512_add_ps(a1, b1), _mm512_add_ps(e1, f1)), nr);
            acc0 = _mm512_max_ps(acc0, s0);
            acc1 = _mm512_max_ps(acc1, s1);
        }
        float part[32];
        _mm512_storeu_ps(part, acc0);
        _mm512_storeu_ps(part + 16, acc1);
        out[d] = lens[d] > 0 ? sum_of(part, 32) : -INFINITY;
    }
}
#endif

#ifdef MC_ARM
/* exact_lut with NEON for any query length up to 128: NB blocks of 4 query tokens (32 registers: queries of up to
 * 40 tokens keep their sums in them), two independent sums per block as in the x86 loops. The centroid scores'
 * last block is copied out under its length, since a row holds only Lq floats. */
static inline __attribute__((always_inline)) void
exact_lut_blocks4(const int NB, const float *table, int64_t Lq, const float *lut, int64_t nbytes,
                  const int32_t *codes, const uint8_t *packed, const float *norms, const int64_t *starts,
                  const int64_t *lens, int64_t ndocs, float *out) {
    const int64_t Lw = 4 * NB;
    const int rem = (int)(Lq % 4);
    for (int64_t d = 0; d < ndocs; d++) {
        float32x4_t acc[NB];
        for (int i = 0; i < NB; i++) acc[i] = vdupq_n_f32(-INFINITY);
        for (int64_t r = starts[d]; r < starts[d] + lens[d]; r++) {
            const float *c = table + (int64_t)codes[r] * Lq;
            const uint8_t *pk = packed + r * nbytes;
            float32x4_t s0[NB], s1[NB];
            for (int i = 0; i < NB; i++) {
                if (i == NB - 1 && rem) {
                    float last[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    memcpy(last, c + 4 * i, (size_t)rem * sizeof(float));
                    s0[i] = vld1q_f32(last);
                } else {
                    s0[i] = vld1q_f32(c + 4 * i);
                }
                s1[i] = vdupq_n_f32(0.0f);
            }
            int64_t b = 0;
            for (; b + 2 <= nbytes; b += 2) {
                const float *t0 = lut + ((b << 8) + pk[b]) * Lw, *t1 = lut + (((b + 1) << 8) + pk[b + 1]) * Lw;
                for (int i = 0; i < NB; i++) {
                    s0[i] = vaddq_f32(s0[i], vld1q_f32(t0 + 4 * i));
                    s1[i] = vaddq_f32(s1[i], vld1q_f32(t1 + 4 * i));
                }
            }
            for (; b < nbytes; b++) {
                const float *t = lut + ((b << 8) + pk[b]) * Lw;
                for (int i = 0; i < NB; i++) s0[i] = vaddq_f32(s0[i], vld1q_f32(t + 4 * i));
            }
            const float32x4_t nr = vdupq_n_f32(norms[r]);
            for (int i = 0; i < NB; i++) acc[i] = vmaxq_f32(acc[i], vdivq_f32(vaddq_f32(s0[i], s1[i]), nr));
        }
        float part[4 * NB];
        for (int i = 0; i < NB; i++) vst1q_f32(part + 4 * i, acc[i]);
        out[d] = lens[d] > 0 ? sum_of(part, Lq) : -INFINITY;
    }
}
#define MC_LUT4_BLOCKS(NB)                                                                                          \
    static void exact_lut4_b##NB(MC_LUT4_ARGS) {                                                                    \
        exact_lut_blocks4(NB, table, Lq, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);             \
    }
#define MC_LUT4_ARGS                                                                                                \
    const float *table, int64_t Lq, const float *lut, int64_t nbytes, const int32_t *codes, const uint8_t *packed,  \
        const float *norms, const int64_t *starts, const int64_t *lens, int64_t ndocs, float *out
MC_LUT4_BLOCKS(1) MC_LUT4_BLOCKS(2) MC_LUT4_BLOCKS(3) MC_LUT4_BLOCKS(4) MC_LUT4_BLOCKS(5) MC_LUT4_BLOCKS(6)
MC_LUT4_BLOCKS(7) MC_LUT4_BLOCKS(8) MC_LUT4_BLOCKS(9) MC_LUT4_BLOCKS(10) MC_LUT4_BLOCKS(11) MC_LUT4_BLOCKS(12)
MC_LUT4_BLOCKS(13) MC_LUT4_BLOCKS(14) MC_LUT4_BLOCKS(15) MC_LUT4_BLOCKS(16) MC_LUT4_BLOCKS(17) MC_LUT4_BLOCKS(18)
MC_LUT4_BLOCKS(19) MC_LUT4_BLOCKS(20) MC_LUT4_BLOCKS(21) MC_LUT4_BLOCKS(22) MC_LUT4_BLOCKS(23) MC_LUT4_BLOCKS(24)
MC_LUT4_BLOCKS(25) MC_LUT4_BLOCKS(26) MC_LUT4_BLOCKS(27) MC_LUT4_BLOCKS(28) MC_LUT4_BLOCKS(29) MC_LUT4_BLOCKS(30)
MC_LUT4_BLOCKS(31) MC_LUT4_BLOCKS(32)
typedef void (*mc_lut4_fn)(MC_LUT4_ARGS);
#endif

#define MC_LUTANY_ARGS                                                                                              \
    const float *table, int64_t Lq, const float *lut, int64_t Lw, int64_t nbytes, const int32_t *codes,            \
        const uint8_t *packed, const float *norms, const int64_t *starts, const int64_t *lens, int64_t ndocs,      \
        float *out
#define MC_LUTANY_BODY { exact_lut(table, Lq, lut, Lw, nbytes, codes, packed, norms, starts, lens, ndocs, out); }
#ifdef MC_X86
MC_T512 static void exact_lut_avx512(MC_LUTANY_ARGS) MC_LUTANY_BODY
MC_T256 static void exact_lut_avx2(MC_LUTANY_ARGS) MC_LUTANY_BODY
#endif
static void exact_lut_portable(MC_LUTANY_ARGS) MC_LUTANY_BODY

/* The row width mc_exact_lookup wants for Lq query tokens at the level in use: Lq rounded up to the vector width
 * (16 floats with AVX-512, 8 with AVX2) for Lq <= 128, where the blocked loops run; else Lq. */
int64_t mc_lut_width(int64_t Lq) {
#ifdef MC_ARM
    int64_t lanes = mc_isa() == MC_ISA_NEON ? 4 : 0;
#else
    int64_t lanes = mc_isa() == MC_ISA_AVX512 ? 16 : mc_isa() == MC_ISA_AVX2 ? 8 : 0;
#endif
    if (lanes && Lq >= 1 && Lq <= 128) return lanes * ((Lq + lanes - 1) / lanes);
    return Lq;
}

/* lut's rows hold Lw floats: mc_lut_width(Lq) (zeros past Lq) where the blocked loops run, else Lq; any other
 * width takes the plain loop. */
void mc_exact_lookup(MC_LUTANY_ARGS) {
#ifdef MC_X86
    int64_t isa = mc_isa();
    if (isa == MC_ISA_AVX512 && Lw == 32 && Lq == 32) {
        exact_lut32_avx512(table, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);
        return;
    }
    if (isa == MC_ISA_AVX512 && Lw == mc_lut_width(Lq) && Lw % 16 == 0 && Lw / 16 >= 1 && Lw / 16 <= 8) {
        static const mc_lut_fn by_blocks[8] = {exact_lut_b1, exact_lut_b2, exact_lut_b3, exact_lut_b4,
                                               exact_lut_b5, exact_lut_b6, exact_lut_b7, exact_lut_b8};
        by_blocks[Lw / 16 - 1](table, Lq, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);
        return;
    }
    if (isa == MC_ISA_AVX2 && Lw == mc_lut_width(Lq) && Lw % 8 == 0 && Lw / 8 >= 1 && Lw / 8 <= 16) {
        static const mc_lut_fn by_blocks8[16] = {
            exact_lut8_b1, exact_lut8_b2,  exact_lut8_b3,  exact_lut8_b4,  exact_lut8_b5,  exact_lut8_b6,
            exact_lut8_b7, exact_lut8_b8,  exact_lut8_b9,  exact_lut8_b10, exact_lut8_b11, exact_lut8_b12,
            exact_lut8_b13, exact_lut8_b14, exact_lut8_b15, exact_lut8_b16};
        by_blocks8[Lw / 8 - 1](table, Lq, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);
        return;
    }
#endif
#ifdef MC_ARM
    if (mc_isa() == MC_ISA_NEON && Lw == mc_lut_width(Lq) && Lw % 4 == 0 && Lw / 4 >= 1 && Lw / 4 <= 32) {
        static const mc_lut4_fn by_blocks4[32] = {
            exact_lut4_b1,  exact_lut4_b2,  exact_lut4_b3,  exact_lut4_b4,  exact_lut4_b5,  exact_lut4_b6,
            exact_lut4_b7,  exact_lut4_b8,  exact_lut4_b9,  exact_lut4_b10, exact_lut4_b11, exact_lut4_b12,
            exact_lut4_b13, exact_lut4_b14, exact_lut4_b15, exact_lut4_b16, exact_lut4_b17, exact_lut4_b18,
            exact_lut4_b19, exact_lut4_b20, exact_lut4_b21, exact_lut4_b22, exact_lut4_b23, exact_lut4_b24,
            exact_lut4_b25, exact_lut4_b26, exact_lut4_b27, exact_lut4_b28, exact_lut4_b29, exact_lut4_b30,
            exact_lut4_b31, exact_lut4_b32};
        by_blocks4[Lw / 4 - 1](table, Lq, lut, nbytes, codes, packed, norms, starts, lens, ndocs, out);
        return;
    }
#endif
#define MC_CALL(isa) exact_lut_##isa(table, Lq, lut, Lw, nbytes, codes, packed, norms, starts, lens, ndocs, out)
    MC_DISPATCH(MC_CALL)
#undef MC_CALL
}

/* Dot products of one float vector q [dim] with n int8 rows [n, dim], each times its scale when scales is given,
 * into out [n]: an index's pooled single vectors (int8 rows, one scale each) against a query's. Widening the rows
 * to float32 first, as numpy does, took 3.6x this loop's time (15,555 x 384 rows, 2-core Xeon). */
#define MC_DOT_ARGS const int8_t *rows, int64_t n, int64_t dim, const float *scales, const float *q, float *out
#define MC_DOT_BODY                                                                                                 \
    {                                                                                                               \
        for (int64_t i = 0; i < n; i++) {                                                                           \
            const int8_t *row = rows + i * dim;                                                                     \
            float acc = 0.0f;                                                                                       \
            _Pragma("omp simd reduction(+ : acc)") for (int64_t j = 0; j < dim; j++) acc += (float)row[j] * q[j];   \
            out[i] = scales ? acc * scales[i] : acc;                                                                \
        }                                                                                                           \
    }
#ifdef MC_X86
MC_T512 static void int8_rows_dot_avx512(MC_DOT_ARGS) MC_DOT_BODY
MC_T256 static void int8_rows_dot_avx2(MC_DOT_ARGS) MC_DOT_BODY
#endif
static void int8_rows_dot_portable(MC_DOT_ARGS) MC_DOT_BODY

void mc_int8_rows_dot(MC_DOT_ARGS) {
#define MC_CALL(isa) int8_rows_dot_##isa(rows, n, dim, scales, q, out)
    MC_DISPATCH(MC_CALL)
#undef MC_CALL
}

#ifndef MC_KERNEL_ONLY
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_plaid_cpu",
                                    "Compiled PLAID stages (called through ctypes by medcolbert.search.cpu_kernel).",
                                    -1, NULL};

PyMODINIT_FUNC PyInit__plaid_cpu(void) { return PyModule_Create(&module); }
#endif
