// alignn_eval: evaluate an exported alignn TorchScript model from C++ (libtorch only).
//
// This is the minimal host a LAMMPS pair style builds on: it loads the file, reads the
// neighbour-list contract from the module's attributes and metadata.json, and calls
// forward_tensors_z with double-precision positions, as LAMMPS would pass them.
//
// Usage: alignn_eval MODEL.pt < structure.txt
//   structure.txt (whitespace separated):
//     N E compute_stress(0|1)
//     lattice: 9 numbers, rows are cell vectors (Angstrom)
//     N lines: Z x y z            (atomic number, Cartesian Angstrom)
//     E lines: src dst sx sy sz   (full directed list, integer cell offsets of dst)
// Output (stdout, one item per line, %.17g):
//   cutoff C / max_neighbors K / three_body_cutoff T / metadata_bytes B
//   energy E / N force lines "fx fy fz" / (stress: 3 lines of 3) when asked
// Exit codes: 0 ok, 2 bad input, 1 runtime failure (message on stderr).

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: alignn_eval MODEL.pt < structure.txt\n";
    return 2;
  }
  long n = 0, e = 0, want_stress = 0;
  if (!(std::cin >> n >> e >> want_stress) || n < 0 || e < 0) {
    std::cerr << "error: first line must be 'N E compute_stress'\n";
    return 2;
  }
  std::vector<double> lattice(9), positions(3 * n), shift(3 * e);
  std::vector<int64_t> numbers(n), src(e), dst(e);
  for (auto& v : lattice) std::cin >> v;
  for (long i = 0; i < n; ++i)
    std::cin >> numbers[i] >> positions[3 * i] >> positions[3 * i + 1] >> positions[3 * i + 2];
  for (long k = 0; k < e; ++k)
    std::cin >> src[k] >> dst[k] >> shift[3 * k] >> shift[3 * k + 1] >> shift[3 * k + 2];
  if (!std::cin) {
    std::cerr << "error: truncated structure input\n";
    return 2;
  }

  try {
    // With the graph executor's optimisation on, TorchScript differentiates the model
    // symbolically and runs decomposed backward formulas, which measured slower than eager
    // PyTorch for this model; off, autograd uses the aten backward kernels (docs/export.md).
    torch::jit::setGraphExecutorOptimize(false);
    // metadata.json is a TorchScript extra file: ask for it by name while loading.
    torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
    torch::jit::Module model = torch::jit::load(argv[1], torch::kCPU, extra);
    model.eval();
    std::printf("cutoff %.17g\n", model.attr("cutoff").toDouble());
    std::printf("max_neighbors %ld\n", static_cast<long>(model.attr("max_neighbors").toInt()));
    std::printf("three_body_cutoff %.17g\n", model.attr("three_body_cutoff").toDouble());
    std::printf("metadata_bytes %zu\n", extra["metadata.json"].size());

    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    // from_blob does not own memory: clone so the tensors outlive nothing but themselves.
    std::vector<torch::jit::IValue> inputs{
        torch::from_blob(positions.data(), {n, 3}, f64).clone(),
        torch::from_blob(lattice.data(), {3, 3}, f64).clone(),
        torch::from_blob(numbers.data(), {n}, i64).clone(),
        torch::from_blob(src.data(), {e}, i64).clone(),
        torch::from_blob(dst.data(), {e}, i64).clone(),
        torch::from_blob(shift.data(), {e, 3}, f64).clone(),
        torch::jit::IValue(want_stress != 0),
    };
    auto result = model.get_method("forward_tensors_z")(inputs).toGenericDict();
    auto energy = result.at("energy").toTensor().to(torch::kFloat64);
    auto forces = result.at("forces").toTensor().to(torch::kFloat64).contiguous();
    std::printf("energy %.17g\n", energy.item<double>());
    auto fa = forces.accessor<double, 2>();
    for (long i = 0; i < n; ++i) std::printf("%.17g %.17g %.17g\n", fa[i][0], fa[i][1], fa[i][2]);
    if (want_stress) {
      auto stress = result.at("stress").toTensor().to(torch::kFloat64).contiguous();
      auto sa = stress.accessor<double, 2>();
      std::printf("stress\n");
      for (int a = 0; a < 3; ++a) std::printf("%.17g %.17g %.17g\n", sa[a][0], sa[a][1], sa[a][2]);
    }
  } catch (const std::exception& exc) {
    std::cerr << "error: " << exc.what() << "\n";
    return 1;
  }
  return 0;
}
