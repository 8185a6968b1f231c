/* The exact stage's lookup loop at the widest level this CPU (or emulator) runs against the portable loop, on random
 * tables and codes, for query lengths 1-128 and odd and even residual byte counts. Built by tests/test_exact_stage.py
 * (natively, and for AArch64 to run under qemu-aarch64); prints one line per case and exits 1 on a mismatch. */
#define MC_KERNEL_ONLY 1
#include "../../medcolbert/search/_plaid_cpu.c"

#include <stdio.h>

static uint64_t rng = 88172645463325252ull;
static float uniform(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

int main(void) {
    const int64_t lqs[] = {1, 3, 4, 5, 8, 17, 31, 32, 33, 40, 64, 100, 127, 128};
    const int64_t byte_counts[] = {31, 32};
    const int64_t C = 50, ndocs = 20;
    int64_t widest = mc_set_isa(-1), failures = 0;
    for (size_t a = 0; a < sizeof lqs / sizeof *lqs; a++) {
        for (size_t bc = 0; bc < 2; bc++) {
            int64_t Lq = lqs[a], nbytes = byte_counts[bc];
            int64_t lens[20], starts[20], rows = 0;
            for (int64_t d = 0; d < ndocs; d++) { lens[d] = d == 3 ? 0 : 1 + (d * 7) % 13; starts[d] = rows; rows += lens[d]; }
            float *table = malloc(sizeof(float) * (C + 1) * Lq), *norms = malloc(sizeof(float) * rows);
            int32_t *codes = malloc(sizeof(int32_t) * rows);
            uint8_t *packed = malloc((size_t)(rows * nbytes));
            for (int64_t i = 0; i < (C + 1) * Lq; i++) table[i] = uniform();
            for (int64_t r = 0; r < rows; r++) {
                codes[r] = (int32_t)((r * 31 + 7) % (C + 1)); norms[r] = 0.5f + 0.5f * (uniform() + 1.0f);
                for (int64_t b = 0; b < nbytes; b++) packed[r * nbytes + b] = (uint8_t)((r * 131 + b * 17 + (int64_t)(uniform() * 50)) & 255);
            }
            /* the lookup table laid out with rows of Lq floats (portable) and of mc_lut_width(Lq) (widest) */
            mc_set_isa(widest);
            int64_t Lw = mc_lut_width(Lq);
            float *lut = malloc(sizeof(float) * nbytes * 256 * Lq), *lutw = calloc((size_t)(nbytes * 256 * Lw), sizeof(float));
            for (int64_t i = 0; i < nbytes * 256; i++)
                for (int64_t j = 0; j < Lq; j++) lutw[i * Lw + j] = lut[i * Lq + j] = 0.1f * uniform();
            float plain[20], fast[20];
            mc_set_isa(MC_ISA_PORTABLE);
            mc_exact_lookup(table, Lq, lut, Lq, nbytes, codes, packed, norms, starts, lens, ndocs, plain);
            mc_set_isa(widest);
            mc_exact_lookup(table, Lq, lutw, Lw, nbytes, codes, packed, norms, starts, lens, ndocs, fast);
            double worst = 0;
            for (int64_t d = 0; d < ndocs; d++) {
                if (lens[d] == 0) { if (!(isinf(fast[d]) && fast[d] < 0)) worst = 1e9; continue; }
                double e = fabs((double)plain[d] - fast[d]) / (1.0 + fabs((double)plain[d]));
                if (e > worst) worst = e;
            }
            int bad = worst > 1e-5;
            failures += bad;
            printf("%s level %lld Lq %lld width %lld bytes %lld max rel err %.2e\n", bad ? "MISMATCH" : "ok",
                   (long long)widest, (long long)Lq, (long long)Lw, (long long)nbytes, worst);
            free(table); free(norms); free(codes); free(packed); free(lut); free(lutw);
        }
    }
    return failures ? 1 : 0;
}
