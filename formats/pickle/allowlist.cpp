// The allow-list: which GLOBAL names the machine gives a symbolic Tag, after the protocol-2 renames.
// Kept apart from the machine because it changes with torch releases, and the machine does not.
#include <string>
#include <string_view>

#include "formats/pickle/internal.h"

namespace nemofs::pickle::detail {
namespace {

// Add an entry here to give a global a symbolic tag; everything else stays an inert name. Modules
// are matched after the protocol-2 remapping below.
struct AllowEntry {
  const char* module;
  const char* name;
  Tag tag;
};

constexpr AllowEntry kAllowlist[] = {
    {"collections", "OrderedDict", Tag::OrderedDict},
    {"collections", "defaultdict", Tag::DefaultDict},
    {"collections", "Counter", Tag::Counter},
    {"builtins", "dict", Tag::BuiltinDict},
    {"builtins", "list", Tag::BuiltinList},
    {"builtins", "tuple", Tag::BuiltinTuple},
    {"builtins", "set", Tag::BuiltinSet},
    {"builtins", "frozenset", Tag::BuiltinFrozenSet},
    {"builtins", "bytes", Tag::BuiltinBytes},
    {"builtins", "bytearray", Tag::BuiltinByteArray},
    {"builtins", "getattr", Tag::Getattr},
    {"_codecs", "encode", Tag::CodecsEncode},
    {"copyreg", "_reconstructor", Tag::Reconstructor},
    {"copyreg", "__newobj__", Tag::NewObj},
    {"torch", "Size", Tag::TorchSize},
    {"torch", "device", Tag::TorchDevice},
    {"torch.serialization", "_get_layout", Tag::GetLayout},
    {"torch", "UntypedStorage", Tag::UntypedStorage},
    {"torch.storage", "UntypedStorage", Tag::UntypedStorage},
    {"torch.storage", "TypedStorage", Tag::TypedStorage},
    {"torch", "per_tensor_affine", Tag::TorchQScheme},
    {"torch", "per_tensor_symmetric", Tag::TorchQScheme},
    {"torch", "per_channel_affine", Tag::TorchQScheme},
    {"torch", "per_channel_symmetric", Tag::TorchQScheme},
    {"torch", "per_channel_affine_float_qparams", Tag::TorchQScheme},
    {"torch._utils", "_rebuild_tensor", Tag::RebuildTensor},
    {"torch._utils", "_rebuild_tensor_v2", Tag::RebuildTensorV2},
    {"torch._utils", "_rebuild_tensor_v3", Tag::RebuildTensorV3},
    {"torch._utils", "_rebuild_parameter", Tag::RebuildParameter},
    {"torch._utils", "_rebuild_parameter_with_state", Tag::RebuildParameterWithState},
    {"torch._tensor", "_rebuild_from_type_v2", Tag::RebuildFromTypeV2},
    {"torch._utils", "_rebuild_from_type_v2", Tag::RebuildFromTypeV2},
    {"torch._utils", "_rebuild_qtensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_sparse_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_nested_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_wrapper_subclass", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_xla_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_mlc_tensor", Tag::RebuildOtherTensor},
    {"torch._tensor", "_rebuild_from_type", Tag::RebuildOtherTensor},
};

// torch.<X>Storage / torch.cuda.<X>Storage -> dtype (torch/storage.py _dtype_to_storage_type_map).
struct StorageClass {
  const char* name;
  const char* dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"DoubleStorage", "float64"},   {"FloatStorage", "float32"},      {"HalfStorage", "float16"},
    {"BFloat16Storage", "bfloat16"}, {"LongStorage", "int64"},        {"IntStorage", "int32"},
    {"ShortStorage", "int16"},      {"CharStorage", "int8"},          {"ByteStorage", "uint8"},
    {"BoolStorage", "bool"},        {"ComplexDoubleStorage", "complex128"},
    {"ComplexFloatStorage", "complex64"}, {"QInt8Storage", "qint8"},  {"QUInt8Storage", "quint8"},
    {"QInt32Storage", "qint32"},    {"QUInt4x2Storage", "quint4x2"},  {"QUInt2x4Storage", "quint2x4"},
};

constexpr const char* kTorchDtypes[] = {
    "float64", "double", "float32", "float", "float16", "half", "bfloat16", "int64", "long", "int32",
    "int", "int16", "short", "int8", "uint8", "bool", "uint16", "uint32", "uint64", "complex32",
    "chalf", "complex64", "cfloat", "complex128", "cdouble", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8",
    "qint32", "quint4x2", "quint2x4", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
    "int1", "int2", "int3", "int4", "int5", "int6", "int7",
};

constexpr const char* kTorchLayouts[] = {"strided", "sparse_coo", "sparse_csr", "sparse_csc",
                                         "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged"};

// CPython Lib/_compat_pickle.py (the entries a checkpoint can plausibly hold) and
// torch/serialization.py load_module_mapping.
struct NameMap {
  const char* from_module;
  const char* from_name;  // nullptr: whole module
  const char* to_module;
  const char* to_name;
};
constexpr NameMap kNameMap[] = {
    {"__builtin__", "xrange", "builtins", "range"},
    {"__builtin__", "reduce", "functools", "reduce"},
    {"__builtin__", "intern", "sys", "intern"},
    {"__builtin__", "unichr", "builtins", "chr"},
    {"__builtin__", "unicode", "builtins", "str"},
    {"__builtin__", "long", "builtins", "int"},
    {"__builtin__", "basestring", "builtins", "str"},
    {"itertools", "izip", "builtins", "zip"},
    {"itertools", "imap", "builtins", "map"},
    {"itertools", "ifilter", "builtins", "filter"},
    {"itertools", "ifilterfalse", "itertools", "filterfalse"},
    {"itertools", "izip_longest", "itertools", "zip_longest"},
    {"UserDict", "UserDict", "collections", "UserDict"},
    {"UserList", "UserList", "collections", "UserList"},
    {"UserString", "UserString", "collections", "UserString"},
    {"__builtin__", nullptr, "builtins", nullptr},
    {"copy_reg", nullptr, "copyreg", nullptr},
    {"Queue", nullptr, "queue", nullptr},
    {"cPickle", nullptr, "pickle", nullptr},
    {"cStringIO", nullptr, "io", nullptr},
    {"StringIO", nullptr, "io", nullptr},
    {"exceptions", nullptr, "builtins", nullptr},
    {"torch.tensor", nullptr, "torch._tensor", nullptr},
};

}  // namespace

void remap_python2_name(std::string& module, std::string& name) {
  for (const auto& m : kNameMap) {
    if (module != m.from_module) continue;
    if (m.from_name && name == m.from_name) {
      module = m.to_module;
      name = m.to_name;
      break;
    }
    if (!m.from_name) {
      module = m.to_module;
      break;
    }
  }
}

Allowed look_up(std::string_view module, std::string_view name) {
  Allowed r;
  for (const auto& a : kAllowlist) {
    if (module == a.module && name == a.name) {
      r.tag = a.tag;
      break;
    }
  }
  if (r.tag == Tag::Unknown && (module == "torch" || module == "torch.cuda")) {
    for (const auto& s : kStorageClasses)
      if (name == s.name) {
        r.tag = Tag::TypedStorage;
        r.dtype = s.dtype;
      }
    if (module == "torch") {
      for (const char* d : kTorchDtypes)
        if (name == d) {
          r.tag = Tag::TorchDtype;
          r.dtype = d;
        }
      for (const char* l : kTorchLayouts)
        if (name == l) r.tag = Tag::TorchLayout;
    }
  }
  return r;
}

}  // namespace nemofs::pickle::detail
