// XLA FFI handlers for 2-D float32 convolutions on oneDNN (built by jaxvision/ops/onednn.py).
//
// Layouts are those of jaxvision.backends.cpu.conv: activations NHWC ([B, H, W, C]), kernels HWIO
// ([kh, kw, C_in, C_out]), explicit (lo, hi) padding per spatial axis, no dilation, no
// groups. Three handlers:
//   JvConvForward(x, w) -> y                     forward_training convolution
//   JvConvBackwardData(dy, w) -> dx              dx's shape comes from the result buffer
//   JvConvBackwardWeights(x, dy) -> dw           dw's shape comes from the result buffer
// each with int64 array attributes `strides`, `pad_lo`, `pad_hi` (length 2).
//
// Activations stay in their plain NHWC buffers (no layout change on either side). Kernels
// are reordered per call into the blocked format the primitive prefers (and the weight
// gradient back to HWIO). Primitives are created once per geometry and cached; every call
// gets its own scratchpad (user scratchpad mode), so concurrent calls from XLA's threads do
// not share state.
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = ffi::Span<const int64_t>;
using F32x4 = ffi::Buffer<ffi::F32, 4>;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  static thread_local dnnl::stream stream(Engine());
  return stream;
}

enum class Kind { kForward, kBackwardData, kBackwardWeights };

// A convolution's geometry: x [B, H, W, Ci], w [kh, kw, Ci, Co], y [B, Ho, Wo, Co].
struct Geometry {
  std::vector<int64_t> x, w, y, strides, lo, hi;
  auto Key(Kind kind) const { return std::make_tuple(kind, x, w, y, strides, lo, hi); }
};

std::string Describe(const Geometry& g) {
  auto list = [](const std::vector<int64_t>& v) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
    s << "]";
    return s.str();
  };
  return "x " + list(g.x) + ", w " + list(g.w) + ", y " + list(g.y) + ", strides " +
         list(g.strides) + ", pad_lo " + list(g.lo) + ", pad_hi " + list(g.hi);
}

// The primitive for one geometry and direction, and the weight reorder it needs.
struct Entry {
  dnnl::primitive conv;
  memory::desc user_weights;     // HWIO
  memory::desc wanted_weights;   // the primitive's choice
  memory::desc scratchpad;
  dnnl::primitive reorder;       // user -> wanted (forward, backward data) or back
  memory::desc reorder_scratchpad;
  bool needs_reorder = false;
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

Entry Create(Kind kind, const Geometry& g) {
  const auto f32 = memory::data_type::f32;
  const memory::dims src_dims = {g.x[0], g.x[3], g.x[1], g.x[2]};
  const memory::dims wei_dims = {g.w[3], g.w[2], g.w[0], g.w[1]};
  const memory::dims dst_dims = {g.y[0], g.y[3], g.y[1], g.y[2]};
  const memory::desc src(src_dims, f32, memory::format_tag::nhwc);
  const memory::desc dst(dst_dims, f32, memory::format_tag::nhwc);
  const memory::desc wei_any(wei_dims, f32, memory::format_tag::any);
  const memory::dims strides(g.strides.begin(), g.strides.end());
  const memory::dims lo(g.lo.begin(), g.lo.end()), hi(g.hi.begin(), g.hi.end());
  const auto attr = UserScratchpad();
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(Engine(), dnnl::prop_kind::forward_training,
                                                algo, src, wei_any, dst, strides, lo, hi,
                                                attr);
  Entry e;
  e.user_weights = memory::desc(wei_dims, f32, memory::format_tag::hwio);
  if (kind == Kind::kForward) {
    e.conv = dnnl::convolution_forward(fwd);
    e.wanted_weights = fwd.weights_desc();
    e.scratchpad = fwd.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), algo, src, wei_any, dst,
                                                       strides, lo, hi, fwd, attr);
    e.conv = dnnl::convolution_backward_data(pd);
    e.wanted_weights = pd.weights_desc();
    e.scratchpad = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(Engine(), algo, src, wei_any, dst,
                                                          strides, lo, hi, fwd, attr);
    e.conv = dnnl::convolution_backward_weights(pd);
    e.wanted_weights = pd.diff_weights_desc();
    e.scratchpad = pd.scratchpad_desc();
  }
  e.needs_reorder = e.wanted_weights != e.user_weights;
  if (e.needs_reorder) {
    const bool to_user = kind == Kind::kBackwardWeights;
    dnnl::reorder::primitive_desc pd(Engine(), to_user ? e.wanted_weights : e.user_weights,
                                     Engine(), to_user ? e.user_weights : e.wanted_weights,
                                     attr);
    e.reorder = dnnl::reorder(pd);
    e.reorder_scratchpad = pd.scratchpad_desc();
  }
  return e;
}

const Entry& Lookup(Kind kind, const Geometry& g) {
  using Key = decltype(g.Key(kind));
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[g.Key(kind)];
  if (!slot) slot = std::make_unique<Entry>(Create(kind, g));
  return *slot;
}

std::vector<int64_t> Vec(Dims d) { return std::vector<int64_t>(d.begin(), d.end()); }

ffi::Error Run(Kind kind, Geometry g, float* x, float* w, float* y) {
  try {
    if (g.strides.size() != 2 || g.lo.size() != 2 || g.hi.size() != 2) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                        "strides, pad_lo and pad_hi must have 2 entries: " + Describe(g));
    }
    const Entry& e = Lookup(kind, g);
    auto& s = Stream();
    const auto f32 = memory::data_type::f32;
    memory src(memory::desc({g.x[0], g.x[3], g.x[1], g.x[2]}, f32, memory::format_tag::nhwc),
               Engine(), x);
    memory dst(memory::desc({g.y[0], g.y[3], g.y[1], g.y[2]}, f32, memory::format_tag::nhwc),
               Engine(), y);
    memory user_w(e.user_weights, Engine(), w);
    memory wei = e.needs_reorder ? memory(e.wanted_weights, Engine()) : user_w;
    memory scratch(e.scratchpad, Engine());
    if (kind == Kind::kForward) {
      if (e.needs_reorder) {
        memory rs(e.reorder_scratchpad, Engine());
        e.reorder.execute(s, {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, wei},
                              {DNNL_ARG_SCRATCHPAD, rs}});
      }
      e.conv.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst},
                         {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == Kind::kBackwardData) {
      if (e.needs_reorder) {
        memory rs(e.reorder_scratchpad, Engine());
        e.reorder.execute(s, {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, wei},
                              {DNNL_ARG_SCRATCHPAD, rs}});
      }
      e.conv.execute(s, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, wei},
                         {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e.conv.execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dst},
                         {DNNL_ARG_DIFF_WEIGHTS, wei}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.needs_reorder) {
        memory rs(e.reorder_scratchpad, Engine());
        e.reorder.execute(s, {{DNNL_ARG_FROM, wei}, {DNNL_ARG_TO, user_w},
                              {DNNL_ARG_SCRATCHPAD, rs}});
      }
    }
    s.wait();
  } catch (const std::exception& err) {  // dnnl::error, std::bad_alloc, ...
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution failed (") + err.what() + ") for " +
                          Describe(g));
  }
  return ffi::Error::Success();
}

ffi::Error Forward(F32x4 x, F32x4 w, ffi::ResultBuffer<ffi::F32, 4> y, Dims strides, Dims lo,
                   Dims hi) {
  Geometry g{Vec(x.dimensions()), Vec(w.dimensions()), Vec(y->dimensions()), Vec(strides),
             Vec(lo), Vec(hi)};
  return Run(Kind::kForward, g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error BackwardData(F32x4 dy, F32x4 w, ffi::ResultBuffer<ffi::F32, 4> dx, Dims strides,
                        Dims lo, Dims hi) {
  Geometry g{Vec(dx->dimensions()), Vec(w.dimensions()), Vec(dy.dimensions()), Vec(strides),
             Vec(lo), Vec(hi)};
  return Run(Kind::kBackwardData, g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error BackwardWeights(F32x4 x, F32x4 dy, ffi::ResultBuffer<ffi::F32, 4> dw, Dims strides,
                           Dims lo, Dims hi) {
  Geometry g{Vec(x.dimensions()), Vec(dw->dimensions()), Vec(dy.dimensions()), Vec(strides),
             Vec(lo), Vec(hi)};
  return Run(Kind::kBackwardWeights, g, x.typed_data(), dw->typed_data(), dy.typed_data());
}

}  // namespace

// Two rank-4 float32 operands, one rank-4 float32 result, the geometry as attributes.
#define JV_BIND                          \
  ffi::Ffi::Bind()                       \
      .Arg<F32x4>()                      \
      .Arg<F32x4>()                      \
      .Ret<ffi::Buffer<ffi::F32, 4>>()   \
      .Attr<Dims>("strides")             \
      .Attr<Dims>("pad_lo")              \
      .Attr<Dims>("pad_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JvConvForward, Forward, JV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JvConvBackwardData, BackwardData, JV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JvConvBackwardWeights, BackwardWeights, JV_BIND);

// The ABI version this library was built for, checked by the loader.
extern "C" int64_t JvConvVersion() { return 1; }
