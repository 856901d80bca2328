// Fused CPU kernel of the 3x3 deformable convolution (stride 1, padding 1, one offset group, no
// mask, no bias), the ``fused`` implementation of cnet/adaption/deform.py.
//
// Layout: channels-last. Row r = b * H*W + p of the im2col matrix holds the 9 taps x C channels
// of output cell p of image b, tap-major ([9, C]), so one bilinear sample reads and writes C
// contiguous values (the inner loops vectorise) and its 4 neighbours and weights are computed
// once for all channels. The rows are built a tile at a time in a small per-thread buffer and
// multiplied with the weight at once: the B*H*W x 9*C matrix never exists, which saves its
// memory (0.9 GB at 6 x 256 x 128 x 128) and the page faults of allocating it on every call.
//
//   forward(x_cl [B, H*W, C], offset [B, 18, H, W], w2t [9*C, Cout]) -> out_cl [B*H*W, Cout]
//   backward(grad_out_cl [B*H*W, Cout], x_cl, offset, w2t, need_x, need_offset, need_weight)
//       -> (grad_x_cl [B, H*W, C], grad_offset [B, 18, H, W], grad_w2t [9*C, Cout])
//
// Sampling follows torchvision's deform_conv2d: tap k = 3 i + j samples (y + i - 1 + offset[2k],
// x + j - 1 + offset[2k + 1]); a sample with y <= -1, y >= H, x <= -1 or x >= W is 0 and has no
// gradient; otherwise each of its 4 neighbours outside the map counts 0.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kTile = 128;  // im2col rows per matrix multiply (a 128 x 9C tile stays in L2)

// The 4 neighbours of one sample: flat cell index (0 where outside, with all weights 0), the
// bilinear weight, and the weight's derivatives along y and x.
template <typename T>
struct Sample {
  int64_t idx[4];
  T w[4], wy[4], wx[4];
};

// The sample of tap k at cell p of one image (off_b: that image's [18, H, W] offsets); false
// when it is 0 (a cell or more outside the map).
template <typename T>
inline bool tap_sample(const T* off_b, int64_t k, int64_t p, int64_t h, int64_t w, Sample<T>& s) {
  const int64_t hw = h * w;
  const T py = static_cast<T>(p / w + k / 3 - 1) + off_b[(2 * k) * hw + p];
  const T px = static_cast<T>(p % w + k % 3 - 1) + off_b[(2 * k + 1) * hw + p];
  if (!(py > -1 && py < h && px > -1 && px < w)) return false;  // also false for NaN
  const int64_t y0 = static_cast<int64_t>(std::floor(py)), x0 = static_cast<int64_t>(std::floor(px));
  const T ly = py - y0, lx = px - x0, hy = 1 - ly, hx = 1 - lx;
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1}, xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const T w_[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const T wy_[4] = {-hx, -lx, hx, lx}, wx_[4] = {-hy, hy, -ly, ly};
  for (int n = 0; n < 4; ++n) {
    const bool in = ys[n] >= 0 && ys[n] < h && xs[n] >= 0 && xs[n] < w;
    s.idx[n] = in ? ys[n] * w + xs[n] : 0;
    s.w[n] = in ? w_[n] : T(0);
    s.wy[n] = in ? wy_[n] : T(0);
    s.wx[n] = in ? wx_[n] : T(0);
  }
  return true;
}

// out [C] = sum over the 4 neighbours n of wt[n] * x_b[s.idx[n]]: with wt = s.w the sample itself,
// with s.wy or s.wx its derivative along y or x. x_b: one image's [H*W, C].
template <typename T>
inline void blend(const T* x_b, const Sample<T>& s, const T* wt, int64_t c, T* __restrict__ out) {
  const T *__restrict__ x0 = x_b + s.idx[0] * c, *__restrict__ x1 = x_b + s.idx[1] * c;
  const T *__restrict__ x2 = x_b + s.idx[2] * c, *__restrict__ x3 = x_b + s.idx[3] * c;
  const T w0 = wt[0], w1 = wt[1], w2 = wt[2], w3 = wt[3];
  for (int64_t ch = 0; ch < c; ++ch) out[ch] = w0 * x0[ch] + w1 * x1[ch] + w2 * x2[ch] + w3 * x3[ch];
}

// im2col rows [r0, r0 + n) into cols [n, 9, C].
template <typename T>
void im2col_rows(const T* x, const T* off, int64_t r0, int64_t n, int64_t c, int64_t h, int64_t w, T* cols) {
  const int64_t hw = h * w;
  Sample<T> s;
  for (int64_t r = r0; r < r0 + n; ++r) {
    const int64_t b = r / hw, p = r % hw;
    for (int64_t k = 0; k < 9; ++k) {
      T* col = cols + ((r - r0) * 9 + k) * c;
      if (tap_sample(off + b * 18 * hw, k, p, h, w, s)) {
        blend(x + b * hw * c, s, s.w, c, col);
      } else {
        std::fill(col, col + c, T(0));
      }
    }
  }
}

// The adjoint of im2col_rows for the rows [r0, r0 + n) of one image: scatter the column gradient
// gcols [n, 9, C] into that image's grad_x [H*W, C] (if given) and write the offset gradient.
template <typename T>
void col2im_rows(const T* x, const T* off, const T* gcols, int64_t r0, int64_t n, int64_t c, int64_t h,
                 int64_t w, T* grad_x_b, T* grad_off) {
  const int64_t hw = h * w;
  Sample<T> s;
  std::vector<T> dy(c), dx(c);
  for (int64_t r = r0; r < r0 + n; ++r) {
    const int64_t b = r / hw, p = r % hw;
    const T* xb = x + b * hw * c;
    for (int64_t k = 0; k < 9; ++k) {
      if (!tap_sample(off + b * 18 * hw, k, p, h, w, s)) continue;
      const T* __restrict__ g = gcols + ((r - r0) * 9 + k) * c;
      if (grad_x_b != nullptr) {
        for (int nb = 0; nb < 4; ++nb) {
          const T wn = s.w[nb];
          if (wn == T(0)) continue;  // outside the map
          T* __restrict__ gx = grad_x_b + s.idx[nb] * c;
          for (int64_t ch = 0; ch < c; ++ch) gx[ch] += wn * g[ch];
        }
      }
      if (grad_off != nullptr) {  // d(sample)/dy and /dx, each dotted with the column gradient
        blend(xb, s, s.wy, c, dy.data());
        blend(xb, s, s.wx, c, dx.data());
        T sy = 0, sx = 0;
#pragma omp simd reduction(+ : sy, sx)  // lets the compiler reorder the sums into vector lanes
        for (int64_t ch = 0; ch < c; ++ch) {
          sy += g[ch] * dy[ch];
          sx += g[ch] * dx[ch];
        }
        grad_off[b * 18 * hw + (2 * k) * hw + p] = sy;
        grad_off[b * 18 * hw + (2 * k + 1) * hw + p] = sx;
      }
    }
  }
}

void check_inputs(const at::Tensor& x_cl, const at::Tensor& offset, const at::Tensor& w2t) {
  TORCH_CHECK(x_cl.device().is_cpu() && offset.device().is_cpu() && w2t.device().is_cpu(),
              "cnet_deform: CPU tensors only");
  TORCH_CHECK(x_cl.dim() == 3 && offset.dim() == 4 && offset.size(1) == 18 && w2t.dim() == 2,
              "cnet_deform: expects x_cl [B, H*W, C], offset [B, 18, H, W], w2t [9*C, Cout]");
  TORCH_CHECK(x_cl.size(0) == offset.size(0) && x_cl.size(1) == offset.size(2) * offset.size(3) &&
                  w2t.size(0) == 9 * x_cl.size(2),
              "cnet_deform: x_cl, offset and w2t sizes disagree");
  TORCH_CHECK(x_cl.scalar_type() == offset.scalar_type() && x_cl.scalar_type() == w2t.scalar_type(),
              "cnet_deform: x_cl, offset and w2t dtypes differ");
  TORCH_CHECK(x_cl.is_contiguous() && offset.is_contiguous() && w2t.is_contiguous(), "cnet_deform: contiguous tensors only");
}

at::Tensor forward(const at::Tensor& x_cl, const at::Tensor& offset, const at::Tensor& w2t) {
  check_inputs(x_cl, offset, w2t);
  const int64_t b = x_cl.size(0), c = x_cl.size(2), h = offset.size(2), w = offset.size(3);
  const int64_t rows = b * h * w, tiles = (rows + kTile - 1) / kTile;
  auto out = at::empty({rows, w2t.size(1)}, x_cl.options());
  AT_DISPATCH_FLOATING_TYPES(x_cl.scalar_type(), "cnet_deform_forward", [&] {
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      auto cols = at::empty({kTile, 9 * c}, x_cl.options());
      for (int64_t t = begin; t < end; ++t) {
        const int64_t r0 = t * kTile, n = std::min(kTile, rows - r0);
        im2col_rows(x_cl.data_ptr<scalar_t>(), offset.data_ptr<scalar_t>(), r0, n, c, h, w, cols.data_ptr<scalar_t>());
        auto out_rows = out.narrow(0, r0, n);
        at::mm_out(out_rows, cols.narrow(0, 0, n), w2t);  // single-threaded inside parallel_for
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x_cl,
                                                        const at::Tensor& offset, const at::Tensor& w2t, bool need_x,
                                                        bool need_offset, bool need_weight) {
  check_inputs(x_cl, offset, w2t);
  const int64_t b = x_cl.size(0), c = x_cl.size(2), h = offset.size(2), w = offset.size(3), hw = h * w;
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.dim() == 2 && grad_out.size(0) == b * hw &&
                  grad_out.size(1) == w2t.size(1) && grad_out.scalar_type() == x_cl.scalar_type(),
              "cnet_deform: grad_out must be a contiguous [B*H*W, Cout] tensor of x's dtype");
  // Work items are (image, part of its cells); the input-gradient scatter of a part goes to its
  // own copy of the image's gradient (summed at the end), so no two threads write the same
  // memory. Images are split into parts only when there are fewer images than threads.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t b1 = std::max<int64_t>(b, 1);
  const int64_t parts = std::max<int64_t>(1, std::min((threads + b1 - 1) / b1, (hw + kTile - 1) / kTile));
  const int64_t items = b * parts, slots = std::max<int64_t>(1, std::min(threads, items));  // a slot: one thread's items
  const auto opts = x_cl.options();
  auto grad_x = need_x ? at::zeros({parts, b, hw, c}, opts) : at::empty({0}, opts);
  auto grad_off = need_offset ? at::zeros({b, 18, h, w}, opts) : at::empty({0}, opts);
  auto grad_w = need_weight ? at::zeros({slots, 9 * c, w2t.size(1)}, opts) : at::empty({0}, opts);
  if (!(need_x || need_offset || need_weight)) return {grad_x, grad_off, grad_w};
  const auto w2 = w2t.t();  // [Cout, 9C]
  AT_DISPATCH_FLOATING_TYPES(x_cl.scalar_type(), "cnet_deform_backward", [&] {
    const scalar_t* xp = x_cl.data_ptr<scalar_t>();
    const scalar_t* op = offset.data_ptr<scalar_t>();
    at::parallel_for(0, slots, 1, [&](int64_t slot_begin, int64_t slot_end) {
      auto cols = at::empty({kTile, 9 * c}, opts);
      auto gcols = at::empty({kTile, 9 * c}, opts);
      for (int64_t slot = slot_begin; slot < slot_end; ++slot) {
        for (int64_t item = slot * items / slots; item < (slot + 1) * items / slots; ++item) {
          const int64_t bi = item / parts, part = item % parts;
          const int64_t p0 = part * hw / parts, p1 = (part + 1) * hw / parts;
          scalar_t* gx = need_x ? grad_x.data_ptr<scalar_t>() + (part * b + bi) * hw * c : nullptr;
          for (int64_t q = p0; q < p1; q += kTile) {
            const int64_t r0 = bi * hw + q, n = std::min(kTile, p1 - q);
            const auto g = grad_out.narrow(0, r0, n);  // [n, Cout]
            if (need_weight) {
              im2col_rows(xp, op, r0, n, c, h, w, cols.data_ptr<scalar_t>());
              grad_w[slot].addmm_(cols.narrow(0, 0, n).t(), g);
            }
            if (need_x || need_offset) {
              auto gcols_rows = gcols.narrow(0, 0, n);
              at::mm_out(gcols_rows, g, w2);
              col2im_rows(xp, op, gcols.data_ptr<scalar_t>(), r0, n, c, h, w, gx,
                          need_offset ? grad_off.data_ptr<scalar_t>() : nullptr);
            }
          }
        }
      }
    });
  });
  if (need_x) grad_x = parts > 1 ? grad_x.sum(0) : grad_x.select(0, 0);
  if (need_weight) grad_w = slots > 1 ? grad_w.sum(0) : grad_w.select(0, 0);
  return {grad_x, grad_off, grad_w};
}

}  // namespace

TORCH_LIBRARY(cnet_deform, m) {
  m.def("forward(Tensor x_cl, Tensor offset, Tensor w2t) -> Tensor", &forward);
  m.def("backward(Tensor grad_out, Tensor x_cl, Tensor offset, Tensor w2t, bool need_x, bool need_offset, "
        "bool need_weight) -> (Tensor, Tensor, Tensor)", &backward);
}
