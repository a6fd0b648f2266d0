// pair_style alignn: an exported alignn TorchScript model as a LAMMPS pair style.
//
//   plugin load libpair_alignn.so
//   pair_style alignn
//   pair_coeff * * model.pt Cu Ni      (LAMMPS type -> element, one per type)
//
// The model (written by `alignn export torchscript`, contract in docs/export.md) evaluates one
// whole periodic structure: its receptive field is (alignn_layers + gcn_layers) x cutoff, so it
// cannot be split over MPI subdomains with ordinary ghost shells. Every rank sends its owned
// atoms and its full-neighbour-list pairs within the cutoff (as atom IDs plus the ghost's image
// position) to rank 0, which maps each ghost to its owner and integer periodic shift, runs the
// model once and scatters the forces back to the owners. There are no ghost forces, so the
// result does not depend on `newton` or on the number of ranks. See docs/lammps.md.

#ifdef PAIR_CLASS
// clang-format off
PairStyle(alignn,PairALIGNN);
// clang-format on
#else

#ifndef LMP_PAIR_ALIGNN_H
#define LMP_PAIR_ALIGNN_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairALIGNN : public Pair {
 public:
  PairALIGNN(class LAMMPS *);
  ~PairALIGNN() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

  struct Model;    // libtorch state, defined in pair_alignn.cpp (keeps torch out of this header)

 protected:
  void allocate();
  [[noreturn]] void fail_all(const std::string &message);
  void check_all(const std::string &message_on_root);

  std::unique_ptr<Model> model;    // rank 0 only
  double cutoff;                   // Angstrom, from the model's `cutoff` attribute
  std::vector<long> type_z;        // atomic number of each LAMMPS type (index 1..ntypes)
  std::string model_path;
};

}    // namespace LAMMPS_NS

#endif
#endif
