/* fp32 kernels for Cortex-M: the convolutions of a float MobileNetV1 on NHWC activations,
 * each with its bias and clamp (ReLU: [0, inf), ReLU6: [0, 6], none: [-inf, inf]) fused,
 * called by the TVM kernels of compiler/float_arm_m.py (T.call_extern). Copied into an
 * artifact as kernels_f32_arm_m.c for MCU targets whose file names a kernel feature; built
 * with the target's flags at -O3. Nothing is allocated; accumulators live in registers.
 *
 * Weights come prepacked by the compiler in each kernel's order:
 *   pointwise  panels of EM_PANEL outputs: w[o / P][c][o % P] (P = 8 on MVE, 4 otherwise)
 *   depthwise  w[ky][kx][c] (3 x 3 taps, channels innermost like the activations)
 *   conv       w[ky][kx][c][o] (the first conv: a few input channels, O a multiple of 8)
 *
 * Two paths, chosen by the compiler's flags:
 *   MVE-F (Cortex-M55/M85, __ARM_FEATURE_MVE & 2): four fp32 lanes per vector. Pointwise
 *     keeps 2 pixels x 8 outputs in 4 vector accumulators and multiplies by the input as a
 *     scalar operand (VFMA.F32 Qd, Qn, Rm); depthwise four channels per vector, conv eight
 *     outputs in two.
 *   scalar FPU (Cortex-M7 FPv5, 32 single registers): pointwise 4 pixels x 4 outputs over
 *     two input channels at a time, all 32 registers in use (16 accumulators, 8 weights,
 *     8 inputs) and loaded by VLDM (inline assembly); depthwise two channels across the
 *     map with their 18 weights in registers; conv eight accumulators. Without the
 *     assembly (a host build: the tests compare it against numpy) the same blocks in C.
 */
#include <math.h>
#include <stdint.h>

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 2)
#include <arm_mve.h>
#define EM_F32_MVE 1
#endif

#if defined(EM_F32_MVE)
#define EM_PANEL 8   /* pointwise outputs per weight panel: two vectors */
#else
#define EM_PANEL 4   /* four scalar accumulators per pixel */
#endif

/* fmaxf / fminf: VMAXNM / VMINNM on FPv5, no compare and branch. */
static inline float em_clampf(float v, float lo, float hi)
{
    return fminf(fmaxf(v, lo), hi);
}

#if defined(EM_F32_MVE)
static inline void em_store4(float *y, float32x4_t acc, float32x4_t lo, float32x4_t hi)
{
    vst1q_f32(y, vminnmq_f32(vmaxnmq_f32(acc, lo), hi));
}
#endif

/* ---- pointwise: y[p][o] = clamp(bias[o] + sum_c x[p][c] w[c][o]); O a multiple of 8 ---- */

#if defined(EM_F32_MVE)
static void em_pw_panel(const float *x, const float *wp, const float *b, float *y,
                        int32_t pixels, int32_t c, int32_t o, float32x4_t lo, float32x4_t hi)
{
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4);
    int32_t p = 0;
    for (; p + 2 <= pixels; p += 2) {
        const float *x0 = x + p * c, *x1 = x0 + c, *wk = wp;
        float32x4_t a00 = b0, a01 = b1, a10 = b0, a11 = b1;
        for (int32_t k = 0; k < c; k++, wk += EM_PANEL) {
            const float32x4_t w0 = vld1q_f32(wk), w1 = vld1q_f32(wk + 4);
            const float v0 = x0[k], v1 = x1[k];
            a00 = vfmaq_n_f32(a00, w0, v0);
            a01 = vfmaq_n_f32(a01, w1, v0);
            a10 = vfmaq_n_f32(a10, w0, v1);
            a11 = vfmaq_n_f32(a11, w1, v1);
        }
        float *y0 = y + p * o;
        em_store4(y0, a00, lo, hi);
        em_store4(y0 + 4, a01, lo, hi);
        em_store4(y0 + o, a10, lo, hi);
        em_store4(y0 + o + 4, a11, lo, hi);
    }
    if (p < pixels) {
        const float *x0 = x + p * c, *wk = wp;
        float32x4_t a0 = b0, a1 = b1;
        for (int32_t k = 0; k < c; k++, wk += EM_PANEL) {
            a0 = vfmaq_n_f32(a0, vld1q_f32(wk), x0[k]);
            a1 = vfmaq_n_f32(a1, vld1q_f32(wk + 4), x0[k]);
        }
        em_store4(y + p * o, a0, lo, hi);
        em_store4(y + p * o + 4, a1, lo, hi);
    }
}
#else
#if defined(__thumb2__) && defined(__ARM_FP) && (__ARM_FP & 4)
#define EM_PW_ASM 1
/* Four accumulators a.. += four weights w.. times one input v (register numbers). */
#define EM_FMA4(a0, a1, a2, a3, w0, w1, w2, w3, v)                                      \
    "vfma.f32 s" #a0 ", s" #w0 ", s" #v "\n\t" "vfma.f32 s" #a1 ", s" #w1 ", s" #v "\n\t" \
    "vfma.f32 s" #a2 ", s" #w2 ", s" #v "\n\t" "vfma.f32 s" #a3 ", s" #w3 ", s" #v "\n\t"
/* s0-s3 (the bias) copied into the next pixel's accumulators. */
#define EM_COPY4(a0, a1, a2, a3)                                                        \
    "vmov.f32 s" #a0 ", s0\n\t" "vmov.f32 s" #a1 ", s1\n\t"                               \
    "vmov.f32 s" #a2 ", s2\n\t" "vmov.f32 s" #a3 ", s3\n\t"
/* acc[p][j] = b[j] + sum_k x[p][k] w[k][j] for 4 pixels (rows c floats apart) x 4 outputs,
 * k two at a time: one VLDM of 8 weights and one of 2 inputs per pixel feed 32 VFMAs; the
 * 16 accumulators, 8 weights and 8 inputs fill s0-s31. c even, >= 2. */
static void em_pw_4x4_fpv5(const float *x, int32_t c, const float *wk, const float *b,
                           float *acc)
{
    const float *x0 = x, *x1 = x + c, *x2 = x1 + c, *x3 = x2 + c;
    int32_t n = c >> 1;
    __asm__ volatile(
        "vldmia %[b], {s0-s3}\n\t"
        EM_COPY4(4, 5, 6, 7) EM_COPY4(8, 9, 10, 11) EM_COPY4(12, 13, 14, 15)
        "1:\n\t"
        "vldmia %[w]!, {s16-s23}\n\t"
        "vldmia %[x0]!, {s24-s25}\n\t"
        "vldmia %[x1]!, {s26-s27}\n\t"
        "vldmia %[x2]!, {s28-s29}\n\t"
        "vldmia %[x3]!, {s30-s31}\n\t"
        EM_FMA4(0, 1, 2, 3, 16, 17, 18, 19, 24)
        EM_FMA4(4, 5, 6, 7, 16, 17, 18, 19, 26)
        EM_FMA4(8, 9, 10, 11, 16, 17, 18, 19, 28)
        EM_FMA4(12, 13, 14, 15, 16, 17, 18, 19, 30)
        EM_FMA4(0, 1, 2, 3, 20, 21, 22, 23, 25)
        EM_FMA4(4, 5, 6, 7, 20, 21, 22, 23, 27)
        EM_FMA4(8, 9, 10, 11, 20, 21, 22, 23, 29)
        EM_FMA4(12, 13, 14, 15, 20, 21, 22, 23, 31)
        "subs %[n], %[n], #1\n\t"
        "bne 1b\n\t"
        "vstmia %[acc], {s0-s15}\n\t"
        : [w] "+r"(wk), [x0] "+r"(x0), [x1] "+r"(x1), [x2] "+r"(x2), [x3] "+r"(x3),
          [n] "+r"(n)
        : [b] "r"(b), [acc] "r"(acc)
        : "memory", "cc", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7",
          "s8", "s9", "s10", "s11", "s12", "s13", "s14", "s15",
          "s16", "s17", "s18", "s19", "s20", "s21", "s22", "s23",
          "s24", "s25", "s26", "s27", "s28", "s29", "s30", "s31");
}
#endif

/* Four outputs (one panel) for every pixel: a 4 x 4 block of accumulators at a time. */
static void em_pw_quad(const float *x, const float *wp, const float *b, float *y,
                       int32_t pixels, int32_t c, int32_t o, float lo, float hi)
{
    int32_t p = 0;
#if defined(EM_PW_ASM)
    if (c > 0 && (c & 1) == 0) {
        for (; p + 4 <= pixels; p += 4) {
            float a[16];
            em_pw_4x4_fpv5(x + p * c, c, wp, b, a);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    y[(p + i) * o + j] = em_clampf(a[i * 4 + j], lo, hi);
        }
    }
#endif
    for (; p + 4 <= pixels; p += 4) {
        const float *x0 = x + p * c, *wk = wp;
        float a[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                a[i][j] = b[j];
        for (int32_t k = 0; k < c; k++, wk += EM_PANEL) {
            const float w0 = wk[0], w1 = wk[1], w2 = wk[2], w3 = wk[3];
            for (int i = 0; i < 4; i++) {
                const float v = x0[i * c + k];
                a[i][0] = fmaf(v, w0, a[i][0]);
                a[i][1] = fmaf(v, w1, a[i][1]);
                a[i][2] = fmaf(v, w2, a[i][2]);
                a[i][3] = fmaf(v, w3, a[i][3]);
            }
        }
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                y[(p + i) * o + j] = em_clampf(a[i][j], lo, hi);
    }
    for (; p < pixels; p++) {
        const float *x0 = x + p * c, *wk = wp;
        float a0 = b[0], a1 = b[1], a2 = b[2], a3 = b[3];
        for (int32_t k = 0; k < c; k++, wk += EM_PANEL) {
            a0 = fmaf(x0[k], wk[0], a0);
            a1 = fmaf(x0[k], wk[1], a1);
            a2 = fmaf(x0[k], wk[2], a2);
            a3 = fmaf(x0[k], wk[3], a3);
        }
        float *yp = y + p * o;
        yp[0] = em_clampf(a0, lo, hi);
        yp[1] = em_clampf(a1, lo, hi);
        yp[2] = em_clampf(a2, lo, hi);
        yp[3] = em_clampf(a3, lo, hi);
    }
}
#endif

int32_t em_f32_pointwise(const float *x, const float *w, const float *bias, const float *clamp,
                         float *y, int32_t pixels, int32_t c, int32_t o)
{
    for (int32_t ob = 0; ob < o; ob += EM_PANEL) {
        const float *wp = w + ob * c;
#if defined(EM_F32_MVE)
        em_pw_panel(x, wp, bias + ob, y + ob, pixels, c, o, vdupq_n_f32(clamp[0]),
                    vdupq_n_f32(clamp[1]));
#else
        em_pw_quad(x, wp, bias + ob, y + ob, pixels, c, o, clamp[0], clamp[1]);
#endif
    }
    return 0;
}

/* ---- depthwise 3 x 3, stride sh x sw, zero padding (top, left; the rest implied by
 * ho, wo); C a multiple of 4. Inside the image the nine taps are unrolled; at a border
 * only the taps that land in the image are summed. ------------------------------------- */

#if defined(EM_F32_MVE)
#define EM_DW_TAP(ky, kx) acc = vfmaq_f32(acc, vld1q_f32(xin + (ky) * row + (kx) * c), \
                                          vld1q_f32(wc + ((ky) * 3 + (kx)) * c))

/* One output pixel, four channels per vector. */
static void em_dw_pixel(const float *xin, const float *w, const float *bias, float *y,
                        int32_t c, int32_t row, int32_t ky0, int32_t ky1, int32_t kx0,
                        int32_t kx1, float32x4_t lo, float32x4_t hi)
{
    const int interior = ky0 == 0 && kx0 == 0 && ky1 == 3 && kx1 == 3;
    for (int32_t ch = 0; ch < c; ch += 4, xin += 4, y += 4) {
        const float *wc = w + ch;
        float32x4_t acc = vld1q_f32(bias + ch);
        if (interior) {
            EM_DW_TAP(0, 0); EM_DW_TAP(0, 1); EM_DW_TAP(0, 2);
            EM_DW_TAP(1, 0); EM_DW_TAP(1, 1); EM_DW_TAP(1, 2);
            EM_DW_TAP(2, 0); EM_DW_TAP(2, 1); EM_DW_TAP(2, 2);
        } else {
            for (int32_t ky = ky0; ky < ky1; ky++)
                for (int32_t kx = kx0; kx < kx1; kx++)
                    EM_DW_TAP(ky, kx);
        }
        em_store4(y, acc, lo, hi);
    }
}
#else
/* Two channels of n output pixels in a row whose 3x3 windows are inside the image (p: the
 * first window's corner, step: from one window to the next). The 18 weights stay in
 * registers: a tap is an address, two loads and two multiply-adds. Kept out of line so its
 * registers are its own. */
__attribute__((noinline))
static void em_dw_run(const float *p, const float *w, const float *bias, float *y, int32_t n,
                      int32_t c, int32_t row, int32_t step, float lo, float hi)
{
#define EM_DW_W(ky, kx) const float w##ky##kx##a = w[((ky) * 3 + (kx)) * c],                \
                                    w##ky##kx##b = w[((ky) * 3 + (kx)) * c + 1]
    EM_DW_W(0, 0); EM_DW_W(0, 1); EM_DW_W(0, 2);
    EM_DW_W(1, 0); EM_DW_W(1, 1); EM_DW_W(1, 2);
    EM_DW_W(2, 0); EM_DW_W(2, 1); EM_DW_W(2, 2);
#undef EM_DW_W
#define EM_DW_ROW(r, ky) do {                                                          \
        const float *xr = (r);                                                         \
        a0 = fmaf(xr[0], w##ky##0a, a0); a1 = fmaf(xr[1], w##ky##0b, a1); xr += c;      \
        a0 = fmaf(xr[0], w##ky##1a, a0); a1 = fmaf(xr[1], w##ky##1b, a1); xr += c;      \
        a0 = fmaf(xr[0], w##ky##2a, a0); a1 = fmaf(xr[1], w##ky##2b, a1);               \
    } while (0)
    const float b0 = bias[0], b1 = bias[1];
    for (; n > 0; n--, p += step, y += c) {
        float a0 = b0, a1 = b1;
        EM_DW_ROW(p, 0);
        EM_DW_ROW(p + row, 1);
        EM_DW_ROW(p + 2 * row, 2);
        y[0] = em_clampf(a0, lo, hi);
        y[1] = em_clampf(a1, lo, hi);
    }
#undef EM_DW_ROW
}

/* Two channels of one output pixel at a border: only the taps inside the image. */
static void em_dw_border(const float *x, const float *w, const float *bias, float *y,
                         int32_t h, int32_t wd, int32_t c, int32_t iy, int32_t ix, float lo,
                         float hi)
{
    float a0 = bias[0], a1 = bias[1];
    for (int32_t ky = 0; ky < 3; ky++) {
        if (iy + ky < 0 || iy + ky >= h)
            continue;
        for (int32_t kx = 0; kx < 3; kx++) {
            if (ix + kx < 0 || ix + kx >= wd)
                continue;
            const float *xt = x + ((iy + ky) * wd + ix + kx) * c, *wt = w + (ky * 3 + kx) * c;
            a0 = fmaf(xt[0], wt[0], a0);
            a1 = fmaf(xt[1], wt[1], a1);
        }
    }
    y[0] = em_clampf(a0, lo, hi);
    y[1] = em_clampf(a1, lo, hi);
}

/* Two channels over the whole map, row by row: border pixels one by one, the columns
 * between them as one run. */
static void em_dw_pair(const float *x, const float *w, const float *bias, float *y,
                       int32_t h, int32_t wd, int32_t c, int32_t sh, int32_t sw, int32_t top,
                       int32_t left, int32_t ho, int32_t wo, float lo, float hi)
{
    /* Columns [ox0, ox1) have their window inside the image's width. */
    int32_t ox0 = (left + sw - 1) / sw, ox1 = (wd - 3 + left) / sw + 1;
    ox0 = ox0 > wo ? wo : ox0;
    ox1 = ox1 > wo ? wo : (ox1 < ox0 ? ox0 : ox1);
    for (int32_t oy = 0; oy < ho; oy++) {
        const int32_t iy = oy * sh - top;
        float *yr = y + oy * wo * c;
        const int inside = iy >= 0 && iy + 3 <= h;
        for (int32_t ox = 0; ox < wo; ox++) {
            if (inside && ox == ox0 && ox1 > ox0) {
                em_dw_run(x + (iy * wd + ox0 * sw - left) * c, w, bias, yr + ox0 * c,
                          ox1 - ox0, c, wd * c, sw * c, lo, hi);
                ox = ox1 - 1;
                continue;
            }
            em_dw_border(x, w, bias, yr + ox * c, h, wd, c, iy, ox * sw - left, lo, hi);
        }
    }
}
#endif

int32_t em_f32_depthwise(const float *x, const float *w, const float *bias, const float *clamp,
                         float *y, int32_t h, int32_t wd, int32_t c, int32_t sh, int32_t sw,
                         int32_t top, int32_t left, int32_t ho, int32_t wo)
{
#if defined(EM_F32_MVE)
    const int32_t row = wd * c;
    const float32x4_t lo = vdupq_n_f32(clamp[0]), hi = vdupq_n_f32(clamp[1]);
    for (int32_t oy = 0; oy < ho; oy++) {
        const int32_t iy = oy * sh - top;
        const int32_t ky0 = iy < 0 ? -iy : 0, ky1 = iy + 3 > h ? h - iy : 3;
        for (int32_t ox = 0; ox < wo; ox++, y += c) {
            const int32_t ix = ox * sw - left;
            const int32_t kx0 = ix < 0 ? -ix : 0, kx1 = ix + 3 > wd ? wd - ix : 3;
            /* xin: where tap (0, 0) would read, possibly outside the image (never read). */
            const float *xin = x + (intptr_t)iy * row + (intptr_t)ix * c;
            em_dw_pixel(xin, w, bias, y, c, row, ky0, ky1, kx0, kx1, lo, hi);
        }
    }
#else
    for (int32_t ch = 0; ch < c; ch += 2)
        em_dw_pair(x + ch, w + ch, bias + ch, y + ch, h, wd, c, sh, sw, top, left, ho, wo,
                   clamp[0], clamp[1]);
#endif
    return 0;
}

/* ---- conv (the first layer): any kernel and stride, zero padding, an input read through
 * its strides (channel, row, column: NCHW or NHWC alike); NHWC output, O a multiple of 8:
 * eight outputs per pass (two vectors, or eight scalar accumulators). */

int32_t em_f32_conv(const float *x, const float *w, const float *bias, const float *clamp,
                    float *y, int32_t c, int32_t h, int32_t wd, int32_t sc, int32_t sy,
                    int32_t sx, int32_t o, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                    int32_t top, int32_t left, int32_t ho, int32_t wo)
{
    const float lo = clamp[0], hi = clamp[1];
    for (int32_t oy = 0; oy < ho; oy++) {
        const int32_t iy0 = oy * sh - top;
        const int32_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = iy0 + kh > h ? h - iy0 : kh;
        for (int32_t ox = 0; ox < wo; ox++, y += o) {
            const int32_t ix0 = ox * sw - left;
            const int32_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = ix0 + kw > wd ? wd - ix0 : kw;
            for (int32_t ob = 0; ob < o; ob += 8) {
#if defined(EM_F32_MVE)
                float32x4_t a0 = vld1q_f32(bias + ob), a1 = vld1q_f32(bias + ob + 4);
#else
                float a[8];
                for (int j = 0; j < 8; j++)
                    a[j] = bias[ob + j];
#endif
                for (int32_t ky = ky0; ky < ky1; ky++) {
                    for (int32_t kx = kx0; kx < kx1; kx++) {
                        const float *xt = x + (iy0 + ky) * sy + (ix0 + kx) * sx;
                        const float *wt = w + ((ky * kw + kx) * c) * o + ob;
                        for (int32_t ci = 0; ci < c; ci++, wt += o) {
                            const float v = xt[ci * sc];
#if defined(EM_F32_MVE)
                            a0 = vfmaq_n_f32(a0, vld1q_f32(wt), v);
                            a1 = vfmaq_n_f32(a1, vld1q_f32(wt + 4), v);
#else
                            for (int j = 0; j < 8; j++)
                                a[j] = fmaf(v, wt[j], a[j]);
#endif
                        }
                    }
                }
#if defined(EM_F32_MVE)
                em_store4(y + ob, a0, vdupq_n_f32(lo), vdupq_n_f32(hi));
                em_store4(y + ob + 4, a1, vdupq_n_f32(lo), vdupq_n_f32(hi));
#else
                for (int j = 0; j < 8; j++)
                    y[ob + j] = em_clampf(a[j], lo, hi);
#endif
            }
        }
    }
    return 0;
}
