/* int8 kernels for Cortex-M: the layers of an integer MobileNetV1 on NHWC uint8 activations
 * and int8 OHWI weights, each with its requantization (docs/int8.md), called by the TVM
 * kernels of compiler/integer_arm_m.py (T.call_extern). Copied into an artifact as
 * kernels_s8_arm_m.c for targets whose file names the feature; built with the target's
 * flags at -O3. Nothing is allocated: scratch lives on the stack, at most 2 KB.
 *
 *   _dsp  Armv7E-M DSP (Cortex-M4/M7/M33): uint8 activations widened by UXTB16, weights by
 *         SXTB16, two multiply-adds per SMLAD; pointwise 2 pixels x 2 channels per inner
 *         loop; depthwise weights as int16 pairs for SMLABB/SMLABT.
 *   _mve  Armv8.1-M MVE (Cortex-M55/M85): pointwise on int8 x - 128 (the graph folds
 *         128 * sum(w) into its bias), 16 multiply-adds per VMLADAVA, one pixel x four
 *         channels per pass, predicated tails; depthwise and first conv four channels per
 *         vector; requantization four channels at a time with VQRDMULH and VRSHL.
 *
 * Requantization (the reference's rule, bit for bit):
 *   a = sat32(acc << left); t = (a * M + 2^30) >> 31; u = right ? (t + 2^(right-1)) >> right : t
 *   y = clamp(u + zy, lo, hi)
 */
#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) || defined(__ARM_FEATURE_MVE)
#include <arm_acle.h>
#endif
#if defined(__ARM_FEATURE_MVE)
#include <arm_mve.h>
#endif

#define EM_COL_MAX 64       /* first conv: kh * kw * C taps held on the stack */

/* (a * m + 2^30) >> 31: SMULL, then the rounding constant added across the 64 bits. */
static inline int32_t em_high_mul(int32_t a, int32_t m)
{
#if defined(__ARM_FEATURE_DSP)
    int32_t lo, hi;
    __asm__("smull %0, %1, %2, %3\n\t"
            "adds %0, %0, #0x40000000\n\t"
            "adc %1, %1, #0" : "=&r"(lo), "=&r"(hi) : "r"(a), "r"(m) : "cc");
    return (int32_t)(((uint32_t)hi << 1) | ((uint32_t)lo >> 31));
#else
    return (int32_t)(((int64_t)a * m + (1LL << 30)) >> 31);
#endif
}

static inline int32_t em_requant(int32_t acc, int32_t m, int32_t left, int32_t right)
{
    if (__builtin_expect(left != 0, 0)) {
        int64_t wide = (int64_t)acc << left;
        acc = wide > INT32_MAX ? INT32_MAX : wide < INT32_MIN ? INT32_MIN : (int32_t)wide;
    }
    int32_t t = em_high_mul(acc, m);
    /* ((t >> (right-1)) + 1) >> 1 == (t + 2^(right-1)) >> right, without overflow (|t| <
     * 2^31 - 1); right = 0 makes both shifts 0 and adds nothing: t */
    const int32_t one = right > 0;
    return ((t >> (right - one)) + one) >> one;
}

static inline uint8_t em_clamp(int32_t u, int32_t zy, int32_t lo, int32_t hi)
{
    u += zy;
#if defined(__ARM_FEATURE_SAT)
    u = __usat(u, 8);   /* lo >= 0 and hi <= 255 for a uint8 output: one USAT, then the rest */
#endif
    return (uint8_t)(u < lo ? lo : u > hi ? hi : u);
}

static inline uint32_t em_read32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);   /* one LDR: unaligned access is allowed on M4/M7/M33/M55 */
    return v;
}

static inline uint32_t em_ror8(uint32_t v)
{
    return (v >> 8) | (v << 24);    /* folded into SXTB16/UXTB16's ROR #8 */
}

/* ---- first conv (any window, groups 1): im2col per output pixel -------------------------- */

/* The window of the output pixel whose window starts at (iy0, ix0), in (ky, kx, c) order (the
 * order of an OHWI weight row), minus `offset`, `pad` outside the input. The input is read
 * through strides (NCHW or NHWC). */
#define EM_GATHER(T)                                                                          \
static __attribute__((unused)) void em_gather_##T(const uint8_t *x, int32_t C, int32_t H,   \
                          int32_t W, int32_t sc, int32_t sh, int32_t sw, int32_t KH, int32_t KW, int32_t iy0,        \
                          int32_t ix0, int32_t offset, int32_t pad, T *col)                   \
{                                                                                             \
    const int inside = iy0 >= 0 && iy0 + KH <= H && ix0 >= 0 && ix0 + KW <= W;                \
    for (int32_t ky = 0; ky < KH; ky++) {                                                     \
        const int32_t iy = iy0 + ky;                                                          \
        for (int32_t kx = 0; kx < KW; kx++) {                                                 \
            const int32_t ix = ix0 + kx;                                                      \
            if (!inside && (iy < 0 || iy >= H || ix < 0 || ix >= W)) {                        \
                for (int32_t c = 0; c < C; c++) *col++ = (T)pad;                              \
            } else {                                                                          \
                const uint8_t *px = x + iy * sh + ix * sw;                                    \
                for (int32_t c = 0; c < C; c++) *col++ = (T)(px[c * sc] - offset);           \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
}
EM_GATHER(int16_t)

/* Any conv, plainly: the fallback of the fast first convs for shapes they do not take. */
static void em_conv_plain(const uint8_t *x, const int8_t *w, const int32_t *bias,
                          const int32_t *mult, const int32_t *left, const int32_t *right,
                          uint8_t *y, int32_t C, int32_t H, int32_t W, int32_t sc, int32_t sh,
                          int32_t sw, int32_t K, int32_t KH, int32_t KW, int32_t SH, int32_t SW,
                          int32_t PT, int32_t PL, int32_t HO, int32_t WO, int32_t zx,
                          int32_t zy, int32_t lo, int32_t hi, int32_t offset)
{
    for (int32_t oy = 0; oy < HO; oy++)
        for (int32_t ox = 0; ox < WO; ox++)
            for (int32_t k = 0; k < K; k++) {
                int32_t acc = bias[k];
                for (int32_t ky = 0; ky < KH; ky++)
                    for (int32_t kx = 0; kx < KW; kx++)
                        for (int32_t c = 0; c < C; c++) {
                            int32_t iy = oy * SH - PT + ky, ix = ox * SW - PL + kx;
                            int32_t v = (iy < 0 || iy >= H || ix < 0 || ix >= W) ? zx
                                        : x[iy * sh + ix * sw + c * sc];
                            acc += (v - offset) * w[((k * KH + ky) * KW + kx) * C + c];
                        }
                y[(oy * WO + ox) * K + k] =
                    em_clamp(em_requant(acc, mult[k], left[k], right[k]), zy, lo, hi);
            }
}

#define EM_CONV_ARGS const uint8_t *x, const int8_t *w, const int32_t *bias,                  \
    const int32_t *mult, const int32_t *left, const int32_t *right, uint8_t *y, int32_t C,    \
    int32_t H, int32_t W, int32_t sc, int32_t sh, int32_t sw, int32_t K, int32_t KH,          \
    int32_t KW, int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t HO, int32_t WO,       \
    int32_t zx, int32_t zy, int32_t lo, int32_t hi
#define EM_CONV_PASS x, w, bias, mult, left, right, y, C, H, W, sc, sh, sw, K, KH, KW, SH, SW, \
    PT, PL, HO, WO, zx, zy, lo, hi
#define EM_PACKED_MAX 1024   /* first-conv weights repacked on the stack: at most 2 KB */

/* ---- Armv7E-M DSP -------------------------------------------------------------------------- */
#if defined(__ARM_FEATURE_DSP)

static inline uint32_t em_sxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

static inline uint32_t em_uxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/* First conv: the window gathered once per pixel as int16, the weights widened to int16 once
 * per call (on the stack), one SMLAD per two taps and two output channels per column load. */
int32_t em_s8_conv_dsp(EM_CONV_ARGS)
{
    const int32_t taps = KH * KW * C, tp = (taps + 1) & ~1;
    if (tp > EM_COL_MAX || (K & 1) || K * tp > EM_PACKED_MAX) {
        em_conv_plain(EM_CONV_PASS, 0);
        return 0;
    }
    int16_t packed[EM_PACKED_MAX], col[EM_COL_MAX] __attribute__((aligned(4)));
    for (int32_t k = 0; k < K; k++)
        for (int32_t j = 0; j < tp; j++) packed[k * tp + j] = j < taps ? w[k * taps + j] : 0;
    col[tp - 1] = 0;
    for (int32_t oy = 0; oy < HO; oy++) {
        for (int32_t ox = 0; ox < WO; ox++) {
            em_gather_int16_t(x, C, H, W, sc, sh, sw, KH, KW, oy * SH - PT, ox * SW - PL, 0,
                              zx, col);
            uint8_t *out = y + (oy * WO + ox) * K;
            for (int32_t k = 0; k < K; k += 2) {
                const int16_t *w0 = packed + k * tp, *w1 = w0 + tp;
                int32_t a0 = bias[k], a1 = bias[k + 1];
                for (int32_t j = 0; j < tp; j += 2) {
                    uint32_t xv = em_read32(col + j);
                    a0 = __smlad(xv, em_read32(w0 + j), a0);
                    a1 = __smlad(xv, em_read32(w1 + j), a1);
                }
                out[k] = em_clamp(em_requant(a0, mult[k], left[k], right[k]), zy, lo, hi);
                out[k + 1] = em_clamp(em_requant(a1, mult[k + 1], left[k + 1], right[k + 1]),
                                      zy, lo, hi);
            }
        }
    }
    return 0;
}

/* Four channels of two pixels (x at xp and xp + C) times two output channels' weights (at
 * wp and wp + C): eight SMLADs, every operand loaded and widened once. In assembly: gcc 12
 * keeps part of this loop's state on the stack (about 1.5 times the instructions). */
static inline __attribute__((always_inline)) void em_dot2x2_dsp(
    int32_t *a00, int32_t *a01, int32_t *a10, int32_t *a11, const uint8_t **xp,
    const int8_t **wp, int32_t C)
{
    uint32_t xa, xb, xo, yo, w, wo;
    __asm__("ldr %[xb], [%[xp], %[C]]\n\t"
            "ldr %[xa], [%[xp]], #4\n\t"
            "ldr %[w], [%[wp], %[C]]\n\t"
            "uxtb16 %[xo], %[xa], ror #8\n\t"
            "uxtb16 %[xa], %[xa]\n\t"
            "uxtb16 %[yo], %[xb], ror #8\n\t"
            "uxtb16 %[xb], %[xb]\n\t"
            "sxtb16 %[wo], %[w], ror #8\n\t"
            "sxtb16 %[w], %[w]\n\t"
            "smlad %[a01], %[xa], %[w], %[a01]\n\t"
            "smlad %[a01], %[xo], %[wo], %[a01]\n\t"
            "smlad %[a11], %[xb], %[w], %[a11]\n\t"
            "smlad %[a11], %[yo], %[wo], %[a11]\n\t"
            "ldr %[w], [%[wp]], #4\n\t"
            "sxtb16 %[wo], %[w], ror #8\n\t"
            "sxtb16 %[w], %[w]\n\t"
            "smlad %[a00], %[xa], %[w], %[a00]\n\t"
            "smlad %[a00], %[xo], %[wo], %[a00]\n\t"
            "smlad %[a10], %[xb], %[w], %[a10]\n\t"
            "smlad %[a10], %[yo], %[wo], %[a10]\n\t"
            : [a00] "+r"(*a00), [a01] "+r"(*a01), [a10] "+r"(*a10), [a11] "+r"(*a11),
              [xp] "+r"(*xp), [wp] "+r"(*wp), [xa] "=&r"(xa), [xb] "=&r"(xb), [xo] "=&r"(xo),
              [yo] "=&r"(yo), [w] "=&r"(w), [wo] "=&r"(wo)
            : [C] "r"(C)
            : "memory");
}

/* A layer whose every multiplier is < 1 (left = 0, right >= 1) and whose clamp is the whole
 * uint8 range takes the short requantization: SMULL, the rounding shift, USAT. */
static int em_plain(const int32_t *left, const int32_t *right, int32_t n, int32_t lo, int32_t hi)
{
    if (lo != 0 || hi != 255) return 0;
    for (int32_t i = 0; i < n; i++)
        if (left[i] != 0 || right[i] < 1) return 0;
    return 1;
}

static inline uint8_t em_out_plain(int32_t acc, int32_t m, int32_t r, int32_t zy)
{
    const int32_t t = em_high_mul(acc, m);
    return (uint8_t)__usat((((t >> (r - 1)) + 1) >> 1) + zy, 8);
}

#define EM_Q(acc, m, l, r) (plain ? em_out_plain(acc, m, r, zy)                               \
                                  : em_clamp(em_requant(acc, m, l, r), zy, lo, hi))

/* Four uint8 activations times four int8 weights: two SMLADs (even and odd bytes). */
#define EM_DOT4(acc, xe, xo, we, wo) acc = __smlad(xe, we, __smlad(xo, wo, acc))

static inline __attribute__((always_inline)) int32_t em_pw_dsp_body(const uint8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *left, const int32_t *right,
                            uint8_t *y, int32_t P, int32_t C, int32_t K, int32_t zy, int32_t lo,
                            int32_t hi, const int plain)
{
    const int32_t C4 = C & ~3;
    int32_t p = 0;
    for (; p + 1 < P; p += 2) {
        const uint8_t *x0 = x + p * C, *x1 = x0 + C;
        uint8_t *y0 = y + p * K, *y1 = y0 + K;
        int32_t k = 0;
        for (; k + 1 < K; k += 2) {
            const int8_t *w0 = w + k * C, *w1 = w0 + C;
            int32_t a00 = bias[k], a01 = bias[k + 1], a10 = a00, a11 = a01;
            int32_t c = 0;
            if (C4) {
                const uint8_t *xp = x0;
                const int8_t *wp = w0;
                for (; c < C4; c += 4) em_dot2x2_dsp(&a00, &a01, &a10, &a11, &xp, &wp, C);
            }
            for (; c < C; c++) {
                a00 += x0[c] * w0[c]; a01 += x0[c] * w1[c];
                a10 += x1[c] * w0[c]; a11 += x1[c] * w1[c];
            }
            y0[k] = EM_Q(a00, mult[k], left[k], right[k]);
            y1[k] = EM_Q(a10, mult[k], left[k], right[k]);
            y0[k + 1] = EM_Q(a01, mult[k + 1], left[k + 1], right[k + 1]);
            y1[k + 1] = EM_Q(a11, mult[k + 1], left[k + 1], right[k + 1]);
        }
        for (; k < K; k++) {
            const int8_t *wk = w + k * C;
            int32_t a0 = bias[k], a1 = bias[k];
            for (int32_t c = 0; c < C; c++) { a0 += x0[c] * wk[c]; a1 += x1[c] * wk[c]; }
            y0[k] = EM_Q(a0, mult[k], left[k], right[k]);
            y1[k] = EM_Q(a1, mult[k], left[k], right[k]);
        }
    }
    for (; p < P; p++) {
        const uint8_t *x0 = x + p * C;
        for (int32_t k = 0; k < K; k++) {
            const int8_t *wk = w + k * C;
            int32_t a = bias[k];
            for (int32_t c = 0; c < C; c++) a += x0[c] * wk[c];
            y[p * K + k] = EM_Q(a, mult[k], left[k], right[k]);
        }
    }
    return 0;
}

int32_t em_s8_pointwise_dsp(const uint8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *left, const int32_t *right,
                            uint8_t *y, int32_t P, int32_t C, int32_t K, int32_t zy, int32_t lo,
                            int32_t hi)
{
    return em_plain(left, right, K, lo, hi)
        ? em_pw_dsp_body(x, w, bias, mult, left, right, y, P, C, K, zy, lo, hi, 1)
        : em_pw_dsp_body(x, w, bias, mult, left, right, y, P, C, K, zy, lo, hi, 0);
}

/* One output pixel of channel c of a depthwise conv, any window: the taps inside the input
 * (the padding is 0 and adds nothing). */
static __attribute__((noinline)) int32_t em_dw_border(const uint8_t *x, const int8_t *wc,
                                                      int32_t acc, int32_t H, int32_t W,
                                                      int32_t C, int32_t KH, int32_t KW,
                                                      int32_t iy0, int32_t ix0)
{
    const int32_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + KH > H ? H - iy0 : KH;
    const int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + KW > W ? W - ix0 : KW;
    for (int32_t ky = ky0; ky < ky1; ky++) {
        const uint8_t *row = x + ((iy0 + ky) * W + ix0) * C;
        const int8_t *wr = wc + ky * KW;
        for (int32_t kx = kx0; kx < kx1; kx++) acc += row[kx * C] * wr[kx];
    }
    return acc;
}

static inline uint32_t em_pair(int32_t lo, int32_t hi)
{
    return (uint16_t)lo | ((uint32_t)hi << 16);
}

/* Depthwise: one channel at a time, its 3 x 3 weights held as int16 pairs in five registers
 * (SMLABB / SMLABT take the bottom or the top half) while the plane streams by; each row's
 * pixels whose window is inside the input run without a padding test. */
static inline __attribute__((always_inline)) int32_t em_dw_dsp_body(const uint8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *left, const int32_t *right,
                            uint8_t *y, int32_t H, int32_t W, int32_t C, int32_t KH, int32_t KW,
                            int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t HO,
                            int32_t WO, int32_t zy, int32_t lo, int32_t hi, const int plain)
{
    const int three = KH == 3 && KW == 3;
    const int32_t rs = W * C, step = SW * C;
    const int32_t ox_lo = (PL + SW - 1) / SW;
    int32_t ox_hi = W - 3 + PL >= 0 ? (W - 3 + PL) / SW + 1 : 0;
    ox_hi = ox_hi > WO ? WO : ox_hi;
    for (int32_t c = 0; c < C; c++) {
        const int8_t *wc = w + c * KH * KW;
        const uint32_t p01 = three ? em_pair(wc[0], wc[1]) : 0, p23 = three ? em_pair(wc[2], wc[3]) : 0;
        const uint32_t p45 = three ? em_pair(wc[4], wc[5]) : 0, p67 = three ? em_pair(wc[6], wc[7]) : 0;
        const uint32_t p8 = three ? em_pair(wc[8], 0) : 0;
        const int32_t b = bias[c], m = mult[c], l = left[c], r = right[c];
        const uint8_t *xc = x + c;
        for (int32_t oy = 0; oy < HO; oy++) {
            const int32_t iy0 = oy * SH - PT;
            uint8_t *out = y + oy * WO * C + c;
            const int rows_inside = three && iy0 >= 0 && iy0 + 3 <= H;
            const int32_t lo_x = rows_inside ? ox_lo : WO, hi_x = rows_inside ? ox_hi : WO;
            int32_t ox = 0;
            for (; ox < lo_x && ox < WO; ox++, out += C)
                *out = EM_Q(em_dw_border(xc, wc, b, H, W, C, KH, KW, iy0,
                                        ox * SW - PL), m, l, r);
            const uint8_t *px = xc + iy0 * rs + (ox * SW - PL) * C;
            for (; ox < hi_x; ox++, out += C, px += step) {
                const uint8_t *q = px;
                int32_t acc = __smlabb(q[0], p01, b);
                acc = __smlabt(q[C], p01, acc);
                acc = __smlabb(q[2 * C], p23, acc);
                q += rs;
                acc = __smlabt(q[0], p23, acc);
                acc = __smlabb(q[C], p45, acc);
                acc = __smlabt(q[2 * C], p45, acc);
                q += rs;
                acc = __smlabb(q[0], p67, acc);
                acc = __smlabt(q[C], p67, acc);
                acc = __smlabb(q[2 * C], p8, acc);
                *out = EM_Q(acc, m, l, r);
            }
            for (; ox < WO; ox++, out += C)
                *out = EM_Q(em_dw_border(xc, wc, b, H, W, C, KH, KW, iy0,
                                        ox * SW - PL), m, l, r);
        }
    }
    return 0;
}

int32_t em_s8_depthwise_dsp(const uint8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *left, const int32_t *right,
                            uint8_t *y, int32_t H, int32_t W, int32_t C, int32_t KH, int32_t KW,
                            int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t HO,
                            int32_t WO, int32_t zy, int32_t lo, int32_t hi)
{
    return em_plain(left, right, C, lo, hi)
        ? em_dw_dsp_body(x, w, bias, mult, left, right, y, H, W, C, KH, KW, SH, SW, PT, PL, HO, WO, zy, lo, hi, 1)
        : em_dw_dsp_body(x, w, bias, mult, left, right, y, H, W, C, KH, KW, SH, SW, PT, PL, HO, WO, zy, lo, hi, 0);
}
#endif /* __ARM_FEATURE_DSP */

/* ---- Armv8.1-M MVE (Helium) ---------------------------------------------------------------- */
#if defined(__ARM_FEATURE_MVE)

static inline int32x4_t em_lanes(int32_t a0, int32_t a1, int32_t a2, int32_t a3)
{
    int32x4_t v = vdupq_n_s32(a0);
    v = vsetq_lane_s32(a1, v, 1);
    v = vsetq_lane_s32(a2, v, 2);
    return vsetq_lane_s32(a3, v, 3);
}

/* Requantization of four channels at once: VQSHL (left, saturating, only in layers that have
 * a multiplier >= 1), VQRDMULH, VRSHL by -right (rounding half up), + zy, clamp. A chunk's
 * constants are loaded once for every pixel that uses them. */
typedef struct { int32x4_t m, l, nr; } em_rq4_t;

static inline em_rq4_t em_rq4_load(const int32_t *mult, const int32_t *left,
                                   const int32_t *right, mve_pred16_t pred)
{
    em_rq4_t q = {vldrwq_z_s32(mult, pred), vldrwq_z_s32(left, pred),
                  vnegq_s32(vldrwq_z_s32(right, pred))};
    return q;
}

static inline int32x4_t em_rq4(int32x4_t acc, em_rq4_t q, int shifts_left, int32_t zy,
                               int32_t lo, int32_t hi)
{
    if (shifts_left) acc = vqshlq_s32(acc, q.l);
    acc = vrshlq_s32(vqrdmulhq_s32(acc, q.m), q.nr);
    acc = vaddq_n_s32(acc, zy);
    return vminq_s32(vmaxq_s32(acc, vdupq_n_s32(lo)), vdupq_n_s32(hi));
}

static int em_any(const int32_t *v, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        if (v[i]) return 1;
    return 0;
}

static inline int8x16_t em_load_x(const uint8_t *p)
{   /* x - 128 as int8: flip the top bit */
    return vreinterpretq_s8_u8(veorq_u8(vldrbq_u8(p), vdupq_n_u8(0x80)));
}

static inline int8x16_t em_load_x_z(const uint8_t *p, mve_pred16_t pred)
{   /* lanes off the predicate become 0 ^ 0x80, multiplied by a weight loaded as 0 */
    return vreinterpretq_s8_u8(veorq_u8(vldrbq_z_u8(p, pred), vdupq_n_u8(0x80)));
}

/* First conv, one pixel: every tap (one input byte, or z_x outside) times a vector of the
 * tap's weights for four output channels (VMLA by a scalar), nv vectors of output channels. */
static inline __attribute__((always_inline)) void em_conv_mve_body(EM_CONV_ARGS,
                                                                   const int32_t *wt,
                                                                   const int nv)
{
    const int shifts = em_any(left, K);
    for (int32_t oy = 0; oy < HO; oy++) {
        const int32_t iy0 = oy * SH - PT;
        for (int32_t ox = 0; ox < WO; ox++) {
            const int32_t ix0 = ox * SW - PL;
            const int inside = iy0 >= 0 && iy0 + KH <= H && ix0 >= 0 && ix0 + KW <= W;
            int32x4_t a0 = vldrwq_s32(bias), a1 = a0, a2 = a0, a3 = a0;
            if (nv > 1) a1 = vldrwq_s32(bias + 4);
            if (nv > 2) a2 = vldrwq_s32(bias + 8);
            if (nv > 3) a3 = vldrwq_s32(bias + 12);
            const int32_t *wp = wt;
            for (int32_t ky = 0; ky < KH; ky++) {
                const int32_t iy = iy0 + ky;
                for (int32_t kx = 0; kx < KW; kx++) {
                    const int32_t ix = ix0 + kx;
                    const int valid = inside || (iy >= 0 && iy < H && ix >= 0 && ix < W);
                    const uint8_t *px = x + iy * sh + ix * sw;
#pragma GCC unroll 1
                    for (int32_t c = 0; c < C; c++, wp += 4 * nv) {
                        const int32_t v = valid ? px[c * sc] : zx;
                        a0 = vmlaq_n_s32(a0, vldrwq_s32(wp), v);
                        if (nv > 1) a1 = vmlaq_n_s32(a1, vldrwq_s32(wp + 4), v);
                        if (nv > 2) a2 = vmlaq_n_s32(a2, vldrwq_s32(wp + 8), v);
                        if (nv > 3) a3 = vmlaq_n_s32(a3, vldrwq_s32(wp + 12), v);
                    }
                }
            }
            uint8_t *out = y + (oy * WO + ox) * K;
            const int32x4_t acc[4] = {a0, a1, a2, a3};
            for (int v = 0; v < nv; v++) {
                const em_rq4_t q = em_rq4_load(mult + 4 * v, left + 4 * v, right + 4 * v,
                                               vctp32q(4));
                vstrbq_s32((int8_t *)(out + 4 * v), em_rq4(acc[v], q, shifts, zy, lo, hi));
            }
        }
    }
}

/* First conv: up to 16 output channels as vectors, the weights transposed once per call to
 * [tap][channel] int32 on the stack (at most 2 KB); the raw uint8 input (the bias holds
 * -z_x * sum(w)) padded with z_x. */
int32_t em_s8_conv_mve(EM_CONV_ARGS)
{
    const int32_t taps = KH * KW * C;
    if ((K & 3) || K > 16 || taps * K > 512) {
        em_conv_plain(EM_CONV_PASS, 0);
        return 0;
    }
    int32_t wt[512] __attribute__((aligned(8)));
    for (int32_t t = 0; t < taps; t++)
        for (int32_t k = 0; k < K; k++) wt[t * K + k] = w[k * taps + t];
    switch (K / 4) {
    case 1: em_conv_mve_body(EM_CONV_PASS, wt, 1); break;
    case 2: em_conv_mve_body(EM_CONV_PASS, wt, 2); break;
    case 3: em_conv_mve_body(EM_CONV_PASS, wt, 3); break;
    default: em_conv_mve_body(EM_CONV_PASS, wt, 4); break;
    }
    return 0;
}

/* Pointwise: one pixel x four output channels per pass (VMLADAVA's accumulators must be
 * even registers: four leave room for the pointers), 16 channels per instruction, the last
 * partial 16 predicated. */
int32_t em_s8_pointwise_mve(const uint8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *left, const int32_t *right,
                            uint8_t *y, int32_t P, int32_t C, int32_t K, int32_t zy, int32_t lo,
                            int32_t hi)
{
    const int32_t C16 = C & ~15;
    const int shifts = em_any(left, K);
    for (int32_t k = 0; k < K; k += 4) {
        const int32_t nk = K - k < 4 ? K - k : 4;
        const mve_pred16_t pk = vctp32q(nk);
        const int8_t *w0 = w + k * C;
        const int8_t *w1 = nk > 1 ? w0 + C : w0, *w2 = nk > 2 ? w0 + 2 * C : w0;
        const int8_t *w3 = nk > 3 ? w0 + 3 * C : w0;
        const int32x4_t b = vldrwq_z_s32(bias + k, pk);
        const em_rq4_t q = em_rq4_load(mult + k, left + k, right + k, pk);
        for (int32_t p = 0; p < P; p++) {
            const uint8_t *x0 = x + p * C;
            int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            int32_t c = 0;
            for (; c < C16; c += 16) {
                int8x16_t xv = em_load_x(x0 + c);
                a0 = vmladavaq_s8(a0, xv, vldrbq_s8(w0 + c));
                a1 = vmladavaq_s8(a1, xv, vldrbq_s8(w1 + c));
                a2 = vmladavaq_s8(a2, xv, vldrbq_s8(w2 + c));
                a3 = vmladavaq_s8(a3, xv, vldrbq_s8(w3 + c));
            }
            if (c < C) {
                mve_pred16_t pr = vctp8q(C - c);
                int8x16_t xv = em_load_x_z(x0 + c, pr);
                a0 = vmladavaq_s8(a0, xv, vldrbq_z_s8(w0 + c, pr));
                a1 = vmladavaq_s8(a1, xv, vldrbq_z_s8(w1 + c, pr));
                a2 = vmladavaq_s8(a2, xv, vldrbq_z_s8(w2 + c, pr));
                a3 = vmladavaq_s8(a3, xv, vldrbq_z_s8(w3 + c, pr));
            }
            vstrbq_p_s32((int8_t *)(y + p * K + k),
                         em_rq4(vaddq_s32(em_lanes(a0, a1, a2, a3), b), q, shifts, zy, lo, hi),
                         pk);
        }
    }
    return 0;
}

/* One output pixel, four channels from c (predicated), any window: the taps inside the input
 * (the padding is 0), weights gathered from the [C][KH*KW] rows. */
static __attribute__((noinline)) int32x4_t em_dw_pixel_mve(
    const uint8_t *x, const int8_t *w, int32x4_t acc, int32_t H, int32_t W, int32_t C,
    int32_t KH, int32_t KW, int32_t iy0, int32_t ix0, int32_t c, mve_pred16_t pc,
    uint32x4_t lanes)
{
    const int32_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + KH > H ? H - iy0 : KH;
    const int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + KW > W ? W - ix0 : KW;
    for (int32_t ky = ky0; ky < ky1; ky++)
        for (int32_t kx = kx0; kx < kx1; kx++) {
            int32x4_t xv = vreinterpretq_s32_u32(
                vldrbq_z_u32(x + ((iy0 + ky) * W + ix0 + kx) * C + c, pc));
            int32x4_t wv = vldrbq_gather_offset_z_s32(w + c * KH * KW + ky * KW + kx, lanes, pc);
            acc = vaddq_s32(acc, vmulq_s32(xv, wv));
        }
    return acc;
}

/* The nine taps of one pixel, four channels: x widened by the load, times the tap's weight
 * vector, added. In assembly: gcc 12 keeps this loop's addresses and vectors on the stack
 * (about twice the instructions). */
static inline int32x4_t em_dw9_mve(int32x4_t acc, const uint8_t *q, const int32_t *wt,
                                   int32_t C, int32_t rs)
{
    int32x4_t xv, wv;
    const uint8_t *p, *r;
#define EM_TAP_ASM(ptr, off)                                                                  \
    "vldrb.u32 %q[x], [" ptr "]\n\t"                                                          \
    "vldrw.u32 %q[w], [%[wt], #" #off "]\n\t"                                                 \
    "vmul.i32 %q[x], %q[x], %q[w]\n\t"                                                        \
    "vadd.i32 %q[acc], %q[acc], %q[x]\n\t"
    __asm__("mov %[r], %[q]\n\t"
            EM_TAP_ASM("%[r]", 0)
            "add %[p], %[r], %[C]\n\t"
            EM_TAP_ASM("%[p]", 16)
            "add %[p], %[p], %[C]\n\t"
            EM_TAP_ASM("%[p]", 32)
            "add %[r], %[r], %[rs]\n\t"
            EM_TAP_ASM("%[r]", 48)
            "add %[p], %[r], %[C]\n\t"
            EM_TAP_ASM("%[p]", 64)
            "add %[p], %[p], %[C]\n\t"
            EM_TAP_ASM("%[p]", 80)
            "add %[r], %[r], %[rs]\n\t"
            EM_TAP_ASM("%[r]", 96)
            "add %[p], %[r], %[C]\n\t"
            EM_TAP_ASM("%[p]", 112)
            "add %[p], %[p], %[C]\n\t"
            EM_TAP_ASM("%[p]", 128)
            : [acc] "+w"(acc), [x] "=&w"(xv), [w] "=&w"(wv), [p] "=&r"(p), [r] "=&r"(r)
            : [q] "r"(q), [wt] "r"(wt), [C] "r"(C), [rs] "r"(rs)
            : "memory");
#undef EM_TAP_ASM
    return acc;
}

/* Depthwise: four channels per vector (bytes widened to int32 by the load). The 3 x 3 weights
 * of four channels are transposed once into nine vectors on the stack, read back per tap;
 * pixels whose window leaves the input, other windows and channel tails test each tap. */
int32_t em_s8_depthwise_mve(const uint8_t *x, const int8_t *w, const int32_t *bias,
                            const int32_t *mult, const int32_t *left, const int32_t *right,
                            uint8_t *y, int32_t H, int32_t W, int32_t C, int32_t KH, int32_t KW,
                            int32_t SH, int32_t SW, int32_t PT, int32_t PL, int32_t HO,
                            int32_t WO, int32_t zy, int32_t lo, int32_t hi)
{
    const int32_t rs = W * C;
    const int shifts = em_any(left, C);
    const uint32x4_t lanes = vmulq_n_u32(vidupq_n_u32(0, 1), (uint32_t)(KH * KW));
    int32_t wt[9][4] __attribute__((aligned(8)));
    for (int32_t c = 0; c < C; c += 4) {
        const mve_pred16_t pc = vctp32q(C - c);
        const int fast = KH == 3 && KW == 3 && C - c >= 4;
        if (fast)
            for (int32_t t = 0; t < 9; t++)
                vstrwq_s32(wt[t], vldrbq_gather_offset_s32(w + c * 9 + t, lanes));
        const int32x4_t b = vldrwq_z_s32(bias + c, pc);
        const em_rq4_t rq = em_rq4_load(mult + c, left + c, right + c, pc);
        for (int32_t oy = 0; oy < HO; oy++) {
            const int32_t iy0 = oy * SH - PT;
            const int rows_inside = fast && iy0 >= 0 && iy0 + 3 <= H;
            uint8_t *out = y + oy * WO * C + c;
            for (int32_t ox = 0; ox < WO;) {
                const int32_t ix0 = ox * SW - PL;
                if (rows_inside && ix0 >= 0 && ix0 + 3 <= W) {
                    /* One accumulator: with more, gcc 12 keeps them on the stack. */
                    const uint8_t *q = x + iy0 * rs + ix0 * C + c;
                    const int32x4_t acc = em_dw9_mve(b, q, wt[0], C, rs);
                    vstrbq_s32((int8_t *)out, em_rq4(acc, rq, shifts, zy, lo, hi));
                    ox += 1;
                    out += C;
                    continue;
                }
                int32x4_t acc = em_dw_pixel_mve(x, w, b, H, W, C, KH, KW, iy0, ix0, c, pc, lanes);
                vstrbq_p_s32((int8_t *)out, em_rq4(acc, rq, shifts, zy, lo, hi), pc);
                ox += 1;
                out += C;
            }
        }
    }
    return 0;
}
#endif /* __ARM_FEATURE_MVE */
