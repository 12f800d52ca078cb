// Prototype: XLA FFI handlers for NHWC/HWIO float32 2-D convolutions with oneDNN.
#include <cstdint>
#include "xla/ffi/api/ffi.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace ffi = xla::ffi;
using dnnl::memory;

static dnnl::engine& Eng() { static dnnl::engine e(dnnl::engine::kind::cpu, 0); return e; }
static dnnl::stream& Str() { static thread_local dnnl::stream s(Eng()); return s; }

struct Geo {
  memory::desc src, wei_any, wei_user, dst;
  memory::dims strides, pl, pr;
};

static Geo MakeGeo(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd, ffi::Span<const int64_t> yd,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  Geo g;
  auto f32 = memory::data_type::f32;
  g.src = memory::desc({xd[0], xd[3], xd[1], xd[2]}, f32, memory::format_tag::nhwc);
  g.wei_user = memory::desc({wd[3], wd[2], wd[0], wd[1]}, f32, memory::format_tag::hwio);
  g.wei_any = memory::desc({wd[3], wd[2], wd[0], wd[1]}, f32, memory::format_tag::any);
  g.dst = memory::desc({yd[0], yd[3], yd[1], yd[2]}, f32, memory::format_tag::nhwc);
  g.strides = {strides[0], strides[1]};
  g.pl = {lo[0], lo[1]};
  g.pr = {hi[0], hi[1]};
  return g;
}

// The HWIO weights at `user`, reordered into `wanted` (the primitive's choice) when that differs.
static memory WeightsAs(const memory::desc& wanted, const memory::desc& user, float* data,
                        dnnl::stream& s) {
  memory wu(user, Eng(), data);
  if (wanted == user) return wu;
  memory wp(wanted, Eng());
  dnnl::reorder(wu, wp).execute(s, wu, wp);
  return wp;
}

static dnnl::convolution_forward::primitive_desc FwdPd(const Geo& g) {
  return dnnl::convolution_forward::primitive_desc(
      Eng(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.src, g.wei_any, g.dst, g.strides, g.pl, g.pr);
}

static ffi::Error FwdImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  try {
    Geo g = MakeGeo(x.dimensions(), w.dimensions(), y->dimensions(), strides, lo, hi);
    auto pd = FwdPd(g);
    auto& s = Str();
    memory src(g.src, Eng(), x.typed_data()), dst(g.dst, Eng(), y->typed_data());
    memory wp = WeightsAs(pd.weights_desc(), g.wei_user, w.typed_data(), s);
    dnnl::convolution_forward(pd).execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DST, dst}});
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
  return ffi::Error::Success();
}

// dx from dy and w: x dims come from the result.
static ffi::Error BwdDataImpl(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                              ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  try {
    Geo g = MakeGeo(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, lo, hi);
    auto fwd = FwdPd(g);
    dnnl::convolution_backward_data::primitive_desc pd(
        Eng(), dnnl::algorithm::convolution_direct, g.src, g.wei_any, g.dst, g.strides, g.pl, g.pr, fwd);
    auto& s = Str();
    memory dsrc(g.src, Eng(), dx->typed_data()), ddst(g.dst, Eng(), dy.typed_data());
    memory wp = WeightsAs(pd.weights_desc(), g.wei_user, w.typed_data(), s);
    dnnl::convolution_backward_data(pd).execute(s, {{DNNL_ARG_DIFF_SRC, dsrc}, {DNNL_ARG_WEIGHTS, wp}, {DNNL_ARG_DIFF_DST, ddst}});
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
  return ffi::Error::Success();
}

static ffi::Error BwdWeightsImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dw,
                                 ffi::Span<const int64_t> strides, ffi::Span<const int64_t> lo, ffi::Span<const int64_t> hi) {
  try {
    Geo g = MakeGeo(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, lo, hi);
    auto fwd = FwdPd(g);
    dnnl::convolution_backward_weights::primitive_desc pd(
        Eng(), dnnl::algorithm::convolution_direct, g.src, g.wei_any, g.dst, g.strides, g.pl, g.pr, fwd);
    auto& s = Str();
    memory src(g.src, Eng(), x.typed_data()), ddst(g.dst, Eng(), dy.typed_data());
    memory wu(g.wei_user, Eng(), dw->typed_data());
    bool direct = pd.diff_weights_desc() == g.wei_user;
    memory wp = direct ? wu : memory(pd.diff_weights_desc(), Eng());
    dnnl::convolution_backward_weights(pd).execute(s, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, ddst}, {DNNL_ARG_DIFF_WEIGHTS, wp}});
    if (!direct) dnnl::reorder(wp, wu).execute(s, wp, wu);
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
  return ffi::Error::Success();
}

#define ATTRS .Attr<ffi::Span<const int64_t>>("strides").Attr<ffi::Span<const int64_t>>("pad_lo").Attr<ffi::Span<const int64_t>>("pad_hi")
XLA_FFI_DEFINE_HANDLER_SYMBOL(JvConvFwd, FwdImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JvConvBwdData, BwdDataImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JvConvBwdWeights, BwdWeightsImpl,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>() ATTRS);
