// The emulator's run time (see cuda_emu.h): threads, barriers, dynamic shared memory.
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda_emu.h"
#include "cuda_emu_launch.h"

namespace fcemu {

thread_local uint3 thread_idx;
thread_local uint3 block_idx;
uint3 block_dim;
uint3 grid_dim;

namespace {

enum Kind { BLOCK_START = 0, SYNCTHREADS = 1, BLOCK_EXIT = 2 };
const char* const kind_names[] = {"the block start", "__syncthreads()", "the kernel's end"};

// A barrier over the threads of one block that checks that all of them arrived at the same
// kind of place.  After a mismatch it stops waiting (the launch is reported as failed).
class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n) {}

    void arrive(Kind kind) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (diverged_) return;
        if (count_ == 0) {
            kind_ = kind;
        } else if (kind_ != kind) {
            diverged_ = true;
            message_ = std::string("barrier divergence in block ") +
                       std::to_string(block_idx.x) + ": thread " +
                       std::to_string(thread_idx.x) + " reached " + kind_names[kind] +
                       " while others wait at " + kind_names[kind_];
            cv_.notify_all();
            return;
        }
        const unsigned long phase = phase_;
        if (++count_ == n_) {
            count_ = 0;
            ++phase_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return phase_ != phase || diverged_; });
        }
    }

    bool diverged() const { return diverged_; }
    const std::string& message() const { return message_; }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    unsigned n_, count_ = 0;
    unsigned long phase_ = 0;
    Kind kind_ = BLOCK_START;
    bool diverged_ = false;
    std::string message_;
};

// Worker threads kept between launches (creating 256 threads per launch dominated the run
// time); run(n, f) calls f(t) on workers t = 0..n-1 and returns when all have finished.
class Pool {
  public:
    void run(unsigned n, const std::function<void(unsigned)>& job) {
        std::unique_lock<std::mutex> lock(mutex_);
        while (threads_.size() < n) {
            const unsigned t = threads_.size();
            threads_.emplace_back([this, t] { work(t); });
        }
        job_ = &job;
        active_ = n;
        pending_ = n;
        ++generation_;
        start_.notify_all();
        done_.wait(lock, [&] { return pending_ == 0; });
        job_ = nullptr;
    }

  private:
    void work(unsigned t) {
        unsigned long seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            start_.wait(lock, [&] { return generation_ != seen; });
            seen = generation_;
            if (t >= active_) continue;
            const std::function<void(unsigned)>* job = job_;
            lock.unlock();
            (*job)(t);
            lock.lock();
            if (--pending_ == 0) done_.notify_one();
        }
    }

    std::mutex mutex_;
    std::condition_variable start_, done_;
    std::vector<std::thread> threads_;  // never joined: they live as long as the process
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned active_ = 0, pending_ = 0;
    unsigned long generation_ = 0;
};

Pool& pool() {
    static Pool* p = new Pool;  // leaked on purpose: no destructor races with the workers at exit
    return *p;
}

std::mutex launch_mutex;  // one launch at a time (the kernels' __shared__ statics are global)
Barrier* current_barrier = nullptr;
std::vector<int> predicates;  // __syncthreads_or's inputs, one per thread of the block
unsigned char* current_smem = nullptr;
std::string last_error;

}  // namespace

void set_error(const std::string& message) { last_error = message; }

namespace {
std::mutex shared_mutex;
std::vector<std::pair<unsigned char*, std::size_t>> static_shared;  // registered arrays

// Before a block starts (thread 0, with the others waiting at the block's first barrier).
void poison_static_shared() {
    std::lock_guard<std::mutex> guard(shared_mutex);
    for (auto& [p, n] : static_shared) std::memset(p, 0xFF, n);
}
}  // namespace

void register_shared(void* array, std::size_t bytes) {
    std::lock_guard<std::mutex> guard(shared_mutex);
    auto* p = static_cast<unsigned char*>(array);
    for (auto& entry : static_shared)
        if (entry.first == p) return;
    // the first thread to reach the declaration, before any thread can have written it
    std::memset(p, 0xFF, bytes);
    static_shared.emplace_back(p, bytes);
}

void syncthreads() { current_barrier->arrive(SYNCTHREADS); }

// Each thread leaves its predicate, all meet, each reads them all, and all meet again before
// a later call can overwrite one: the two barriers of a __syncthreads_or.
int syncthreads_or(int predicate) {
    predicates[thread_idx.x] = predicate;
    current_barrier->arrive(SYNCTHREADS);
    int any = 0;
    for (unsigned t = 0; t < block_dim.x; ++t) any |= predicates[t] != 0;
    current_barrier->arrive(SYNCTHREADS);
    return any;
}

unsigned char* dynamic_smem() { return current_smem; }

int run_grid(unsigned grid_x, unsigned grid_y, unsigned block, std::size_t smem,
             const std::function<void()>& body) {
    std::lock_guard<std::mutex> guard(launch_mutex);
    if (grid_x == 0 || grid_y == 0 || grid_y > 65535 || block == 0 || block > 1024) {
        set_error("bad launch configuration: grid " + std::to_string(grid_x) + " x " +
                  std::to_string(grid_y) + ", block " + std::to_string(block));
        return 3;
    }
    if (smem > 227 * 1024) {
        set_error("dynamic shared memory of " + std::to_string(smem) + " bytes");
        return 3;
    }
    Barrier barrier(block);
    predicates.assign(block, 0);
    // Exactly `smem` bytes, so AddressSanitizer reports any access past the launch's size.
    unsigned char* buffer = static_cast<unsigned char*>(std::malloc(smem ? smem : 1));
    current_barrier = &barrier;
    current_smem = smem ? buffer : nullptr;
    grid_dim = uint3{grid_x, grid_y, 1};
    const unsigned long long blocks = (unsigned long long)grid_x * grid_y;
    block_dim = uint3{block, 1, 1};

    pool().run(block, [&](unsigned t) {
        thread_idx = uint3{t, 0, 0};
        for (unsigned long long b = 0; b < blocks && !barrier.diverged(); ++b) {
            block_idx = uint3{unsigned(b % grid_x), unsigned(b / grid_x), 0};
            if (t == 0) {  // NaN in every float type
                if (smem) std::memset(buffer, 0xFF, smem);
                poison_static_shared();
            }
            barrier.arrive(BLOCK_START);
            body();
            barrier.arrive(BLOCK_EXIT);
        }
    });
    std::free(buffer);
    current_barrier = nullptr;
    current_smem = nullptr;
    if (barrier.diverged()) {
        set_error(barrier.message());
        return 4;
    }
    return 0;
}

}  // namespace fcemu

extern "C" const char* fcemu_last_error() { return fcemu::last_error.c_str(); }
