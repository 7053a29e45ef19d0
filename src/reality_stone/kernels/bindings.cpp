// The one Python module of the reality_stone CPU kernels: every source's registered bindings.
#include "kernels.h"

std::vector<reality_stone::BindFn>& reality_stone::binding_registry() {
  static std::vector<BindFn> registry;  // function-local: filled during static initialisation of the sources
  return registry;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  for (auto bind : reality_stone::binding_registry()) bind(m);
}
