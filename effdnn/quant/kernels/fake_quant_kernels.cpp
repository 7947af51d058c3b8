// Fused fake-quantization kernels for quantization-aware training: one pass over the tensor for the
// forward value and what the backward needs, one pass for the backward (the autograd-op versions make
// five to ten passes and as many temporaries).
//
// Each kernel evaluates exactly the float32 expression of its reference (effdnn/formats/integer.py
// _FakeQuant, effdnn/quant/methods/lsq.py _LSQFunction, effdnn/quant/methods/pact.py PACTQuantize), op
// by op in IEEE single precision: a true division (never a reciprocal multiply), round-half-to-even
// (nearbyint under the default rounding mode, as torch.round), no contraction into FMA
// (-ffp-contract=off): the forward values are bit-identical. Reductions (LSQ step, PACT clip
// gradients) accumulate in double, so they match the reference's float32 sums to rounding.
//
// Layout: x is a contiguous float32 tensor viewed as G blocks of N elements (block g uses params[g]).
#include <algorithm>
#include <cmath>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int64_t kChunk = 1 << 14;  // elements per parallel work item

inline float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// the value the reference's LSQ step takes: |(step - step g) + step g| clamped to >= 1e-8 (the
// paper's gradscale: value of step, gradient times g, evaluated as the listing does)
inline float lsq_scale(float step, float g) {
    const float y = step * g;
    const float t = (step - y) + y;
    return std::max(std::fabs(t), 1e-8f);
}

}  // namespace

extern "C" {

int effdnn_fq_version() { return 1; }

// Jacob et al. 2018 eq. 1 with a straight-through gradient gated by the clip:
//   v = round(x / s) + z;  out = (clamp(v, qmin, qmax) - z) * s;  mask = qmin <= v <= qmax
void effdnn_fq_affine(const float* x, int64_t G, int64_t N, const float* s, const float* z, float qmin,
                      float qmax, float* out, uint8_t* mask, int nt) {
    const int64_t total = G * N, chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t lo = c * kChunk, hi = std::min(total, lo + kChunk);
        for (int64_t i = lo; i < hi;) {
            const int64_t g = i / N, end = std::min(hi, (g + 1) * N);
            const float sg = s[g], zg = z[g];
            if (mask) {
                for (int64_t j = i; j < end; ++j) {
                    const float v = std::nearbyint(x[j] / sg) + zg;
                    mask[j] = (v >= qmin) & (v <= qmax);
                    out[j] = (clampf(v, qmin, qmax) - zg) * sg;
                }
            } else {
                for (int64_t j = i; j < end; ++j) {
                    const float v = std::nearbyint(x[j] / sg) + zg;
                    out[j] = (clampf(v, qmin, qmax) - zg) * sg;
                }
            }
            i = end;
        }
    }
}

// out = g * mask (the gated straight-through gradient; codes != 0 count as outside when `invert`)
void effdnn_fq_mask_grad(const float* g, const uint8_t* mask, int64_t n, int invert, float* out, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n > kChunk)
    for (int64_t i = 0; i < n; ++i) {
        const float keep = invert ? static_cast<float>(mask[i] == 0) : static_cast<float>(mask[i] != 0);
        out[i] = g[i] * keep;
    }
}

// LSQ forward (Esser et al. 2020 eq. 1-2): s_g = lsq_scale(step_g, gfac); out = round(clamp(x / s, qmin,
// qmax)) * s. Writes the scales used to s_out (G).
void effdnn_lsq_fwd(const float* x, int64_t G, int64_t N, const float* step, float gfac, float qmin, float qmax,
                    float* out, float* s_out, int nt) {
    for (int64_t g = 0; g < G; ++g) s_out[g] = lsq_scale(step[g], gfac);
    const int64_t total = G * N, chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t lo = c * kChunk, hi = std::min(total, lo + kChunk);
        for (int64_t i = lo; i < hi;) {
            const int64_t g = i / N, end = std::min(hi, (g + 1) * N);
            const float sg = s_out[g];
            for (int64_t j = i; j < end; ++j) out[j] = std::nearbyint(clampf(x[j] / sg, qmin, qmax)) * sg;
            i = end;
        }
    }
}

// LSQ backward (eq. 3-5): v = x / s; gx = gy where qmin < v < qmax else 0;
// ds_g = sum gy * (round(v) - v inside, clamp(v) = the bound outside); then through the step's chain
// (clamp_min, abs, gradscale): dstep_g = ds_g * [|t| >= 1e-8] * sign(t) * gfac.
void effdnn_lsq_bwd(const float* x, const float* gy, int64_t G, int64_t N, const float* step, float gfac, float qmin,
                    float qmax, float* gx, float* dstep, int nt) {
    for (int64_t g = 0; g < G; ++g) {
        const float sg = lsq_scale(step[g], gfac);
        const float* xb = x + g * N;
        const float* gb = gy + g * N;
        float* ob = gx ? gx + g * N : nullptr;
        double acc = 0.0;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && N > 4 * kChunk) reduction(+ : acc)
        for (int64_t j = 0; j < N; ++j) {
            const float v = xb[j] / sg;
            const bool inside = (v > qmin) & (v < qmax);
            const float d = inside ? std::nearbyint(v) - v : clampf(v, qmin, qmax);
            acc += static_cast<double>(gb[j] * d);
            if (ob) ob[j] = gb[j] * static_cast<float>(inside);
        }
        const float y = step[g] * gfac;
        const float t = (step[g] - y) + y;
        const float sign = t > 0 ? 1.0f : (t < 0 ? -1.0f : 0.0f);
        dstep[g] = static_cast<float>(acc) * static_cast<float>(std::fabs(t) >= 1e-8f) * sign * gfac;
    }
}

// PACT forward (Choi et al. 2018 eq. 1-2): y = clamp(x, lo, a), lo = -a (signed) or 0; s = a / levels;
// out = round(y / s) * s; code bit 0: x >= a, bit 1: x <= -a (signed) or x < 0 (unsigned).
void effdnn_pact_fwd(const float* x, int64_t n, float alpha, int is_signed, int levels, float* out, uint8_t* code,
                     int nt) {
    const float lo = is_signed ? -alpha : 0.0f;
    const float s = alpha / static_cast<float>(levels);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n > kChunk)
    for (int64_t i = 0; i < n; ++i) {
        const float xi = x[i];
        const float y = std::min(std::max(xi, lo), alpha);
        out[i] = std::nearbyint(y / s) * s;
        if (code) {
            const bool below = is_signed ? (xi <= -alpha) : (xi < 0.0f);
            code[i] = static_cast<uint8_t>((xi >= alpha) | (below << 1));
        }
    }
}

// PACT backward (eq. 3): gx = gy where code == 0; dalpha = sum gy [x >= a] - sum gy [x <= -a] (signed).
void effdnn_pact_bwd(const float* gy, const uint8_t* code, int64_t n, int is_signed, float* gx, float* dalpha,
                     int nt) {
    double acc = 0.0;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && n > kChunk) reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t c = code[i];
        if (gx) gx[i] = gy[i] * static_cast<float>(c == 0);
        if (c & 1) acc += gy[i];
        if (is_signed && (c & 2)) acc -= gy[i];
    }
    *dalpha = static_cast<float>(acc);
}

}  // extern "C"
