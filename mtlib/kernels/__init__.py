"""Optional GPU kernels (Triton). Nothing here is imported unless asked for, and every kernel
has a torch fallback: mtlib never needs Triton to run."""
