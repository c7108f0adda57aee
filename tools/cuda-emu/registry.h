// registry.h — the table of emulated kernels: name → a trampoline that unpacks
// cuLaunchKernel's `void** params` into the kernel's typed arguments. build.sh generates
// the table (kernels.gen.cpp) from the `extern "C" __global__` definitions in kernels/*.cu.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

namespace tz_emu {
struct KernelEntry {
    const char* name;
    void (*invoke)(void** params);
};
extern const KernelEntry kernels[];
extern const size_t kernel_count;

template <typename... A, size_t... I>
inline void invoke_impl(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <typename... A>
inline void invoke(void (*f)(A...), void** p) {
    invoke_impl(f, p, std::index_sequence_for<A...>{});
}
}  // namespace tz_emu

#define TZ_EMU_KERNEL(name) {#name, [](void** p) { tz_emu::invoke(&name, p); }}
