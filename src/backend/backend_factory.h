// Creates the backend an engine was built for (BuildConfig::backend).
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"

namespace kiln {

// "cpu", or "cuda" when this kiln was built with the CUDA backend and a GPU is visible; otherwise an error
// that says what is missing.
// `device`: which GPU (cuda; rank r of a multi-rank engine uses GPU r). `share` (cpu): this backend is one of
// `share` ranks running side by side: it gets its own pool of 1/share of the threads (1: the shared pool).
Result<std::unique_ptr<Backend>> make_backend(const std::string& name, int device = 0, int share = 1);

// Whether this kiln was compiled with the CUDA backend.
bool cuda_backend_built();

}  // namespace kiln
