// Launching an emulated kernel (see cuda_emu.h): argument checking and the grid loop.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

namespace fcemu {

// Runs body() once per (block, thread) of a 1-D launch; 0 on success, else an error code
// with the message in last_error().
int run_grid(unsigned grid_x, unsigned grid_y, unsigned block, std::size_t smem,
             const std::function<void()>& body);
void set_error(const std::string& message);

// The type code of one kernel parameter: "f4", "f8", "f2", "i4", "i8", with "*" for pointers.
template <typename T>
std::string code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_pointer_v<U>) {
        return code<std::remove_pointer_t<U>>() + "*";
    } else if constexpr (std::is_same_v<U, float>) {
        return "f4";
    } else if constexpr (std::is_same_v<U, double>) {
        return "f8";
    } else if constexpr (std::is_same_v<U, __half>) {
        return "f2";
    } else if constexpr (std::is_same_v<U, int>) {
        return "i4";
    } else if constexpr (std::is_same_v<U, long long>) {
        return "i8";
    } else {
        static_assert(sizeof(T) == 0, "kernel parameter type without an emulator code");
    }
}

template <typename... P>
std::string signature() {
    std::string s;
    ((s += code<P>() + ","), ...);
    return s;
}

// Launch kernel k with the CUDA-style argument array `args` (args[i] points at the i-th
// argument's value) after checking the caller's type codes against k's parameters.
template <typename... P>
int launch(void (*k)(P...), const char* arg_codes, unsigned grid_x, unsigned grid_y,
           unsigned block, std::size_t smem, void** args) {
    const std::string want = signature<P...>();
    if (want != arg_codes) {
        set_error("kernel parameters are (" + want + ") but the launch passed (" +
                  std::string(arg_codes) + ")");
        return 2;
    }
    auto body = [&]<std::size_t... I>(std::index_sequence<I...>) {
        k(*static_cast<std::remove_cv_t<P>*>(args[I])...);
    };
    return run_grid(grid_x, grid_y, block, smem, [&] { body(std::index_sequence_for<P...>{}); });
}

}  // namespace fcemu
