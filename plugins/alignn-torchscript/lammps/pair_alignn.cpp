// pair_style alignn: see pair_alignn.h and docs/lammps.md.
//
// torch headers come first: LAMMPS headers define short macros (FLERR, ...) and open
// namespace LAMMPS_NS, which should not leak into libtorch's templates.
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include "pair_alignn.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <mpi.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <array>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <numeric>
#include <stdexcept>
#include <string>

using namespace LAMMPS_NS;

namespace {

// eV/Angstrom^3 in GPa (alignn_core.units.EV_PER_A3_TO_GPA).
constexpr double EV_PER_A3_TO_GPA = 160.21766208;
// Pairs up to cutoff + PAIR_PAD are passed; the model applies its own d^2 <= cutoff^2 rule to
// r = x[dst] - x[src] + shift.H, which can differ from the ghost's x[j] - x[i] in the last bit.
constexpr double PAIR_PAD = 1.0e-6;
// A ghost's offset from its owner must be an integer combination of the cell vectors; this is
// the largest fractional deviation accepted (float rounding only).
constexpr double SHIFT_TOLERANCE = 1.0e-6;

const char *const ELEMENTS[] = {
    "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",
    "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db",
    "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
constexpr int NUM_ELEMENTS = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);

// The memory-allocator policy ALIGNN_MALLOC (alignn_core/allocator.py, which the alignn command
// and the ASE calculator apply) for this process. Every model call allocates the same large
// tensors; with glibc's defaults each is mmap-ed and page-faulted in anew, and with "retain"
// freed blocks stay in the heap for the next step (fcc Cu MD: 1.6-1.7x more steps/s at 108, 512
// atoms, 3.8x at 4,096; docs/lammps.md). Returns what the log line says, or throws
// std::invalid_argument with the message for an unsupported value.
std::string apply_malloc_policy()
{
  const char *value = std::getenv("ALIGNN_MALLOC");
  std::string policy = value ? value : "";
  const auto first = policy.find_first_not_of(" \t");
  const auto last = policy.find_last_not_of(" \t");
  policy = first == std::string::npos ? "" : policy.substr(first, last - first + 1);
  for (char &c : policy) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (policy.empty() || policy == "retain") {
#if defined(__GLIBC__)
    // Both are tried and each accepted one is named, as alignn_core/allocator.py reports them.
    const bool no_mmap = mallopt(M_MMAP_MAX, 0) != 0;
    const bool no_trim = mallopt(M_TRIM_THRESHOLD, INT_MAX) != 0;
    if (no_mmap && no_trim) return "retain (glibc mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)";
    if (no_mmap) return "retain (glibc mallopt M_MMAP_MAX=0; it refused M_TRIM_THRESHOLD)";
    if (no_trim) return "retain (glibc mallopt M_TRIM_THRESHOLD=2 GiB; it refused M_MMAP_MAX)";
    return "retain (glibc refused mallopt: allocator unchanged)";
#else
    return "retain (not glibc: allocator unchanged)";
#endif
  }
  if (policy == "system") return "system (allocator unchanged)";
  if (policy == "thp")
    throw std::invalid_argument(
        "ALIGNN_MALLOC=thp cannot be applied here (libtorch is loaded already); start LAMMPS "
        "with THP_MEM_ALLOC_ENABLE=1 instead, or use retain or system");
  throw std::invalid_argument(std::string("ALIGNN_MALLOC='") + value +
                              "' is not a memory-allocator policy; use one of system, retain, "
                              "thp (or leave it unset for 'retain')");
}

int atomic_number(const char *symbol)
{
  for (int z = 1; z <= NUM_ELEMENTS; ++z)
    if (std::strcmp(symbol, ELEMENTS[z - 1]) == 0) return z;
  return 0;
}

// One readable line from a libtorch exception: c10::Error carries a C++ backtrace, and an
// error raised inside the scripted model carries the TorchScript traceback before the message.
std::string short_message(const std::exception &exc)
{
  const auto *c10_error = dynamic_cast<const c10::Error *>(&exc);
  std::string text = c10_error ? c10_error->what_without_backtrace() : exc.what();
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (line.find_first_not_of(" \t") != std::string::npos) lines.push_back(line);
    start = end + 1;
  }
  if (lines.empty()) return "unknown error";
  if (text.find("Traceback of TorchScript") != std::string::npos) return lines.back();
  return lines.front();
}

struct Edge {
  int64_t src, dst;
  std::array<int, 3> shift;
  bool operator<(const Edge &o) const
  {
    if (src != o.src) return src < o.src;
    if (dst != o.dst) return dst < o.dst;
    return shift < o.shift;
  }
  bool operator==(const Edge &o) const
  {
    return src == o.src && dst == o.dst && shift == o.shift;
  }
};

}    // namespace

struct PairALIGNN::Model {
  torch::jit::Module module;
  std::string dtype;
  int64_t max_neighbors = 0;       // the model's cap (0: none), applied inside the model
  double min_distance_sq = 0.0;    // pairs at or below it are ignored by the model
};

namespace {

// Pre-cap: the model keeps, per source atom, the max_neighbors nearest pairs (ties broken by
// quantised distance, dst and shift) out of whatever it is given; passing it every pair within
// the cutoff (~42 per atom in fcc Cu at 5 A, 12 kept) measured 20-40% slower than passing few.
// Here each source keeps every pair not farther than its K-th nearest (+ CAP_MARGIN), which
// always contains the model's choice, ties included, so the model's own cap still decides and
// the result is unchanged. Pairs closer than 2x the model's minimum distance are kept but not
// counted (float rounding could put them on either side of it). Edges are sorted by src.
constexpr double CAP_MARGIN = 1.0e-6;    // Angstrom

std::vector<Edge> precap(const std::vector<Edge> &edges, const std::vector<double> &positions,
                         const double lattice[9], int64_t k, double min_distance_sq)
{
  if (k <= 0) return edges;
  std::vector<double> dist(edges.size());
  for (size_t e = 0; e < edges.size(); ++e) {
    const Edge &edge = edges[e];
    double d2 = 0.0;
    for (int c = 0; c < 3; ++c) {
      const double r = positions[3 * edge.dst + c] - positions[3 * edge.src + c] +
          edge.shift[0] * lattice[c] + edge.shift[1] * lattice[3 + c] +
          edge.shift[2] * lattice[6 + c];
      d2 += r * r;
    }
    dist[e] = d2;
  }
  std::vector<Edge> kept;
  kept.reserve(edges.size());
  std::vector<double> counted;
  for (size_t begin = 0; begin < edges.size();) {
    size_t end = begin;
    while (end < edges.size() && edges[end].src == edges[begin].src) ++end;
    counted.clear();
    for (size_t e = begin; e < end; ++e)
      if (dist[e] > 4.0 * min_distance_sq) counted.push_back(dist[e]);
    double limit = INFINITY;
    if (static_cast<int64_t>(counted.size()) > k) {
      std::nth_element(counted.begin(), counted.begin() + (k - 1), counted.end());
      limit = std::sqrt(counted[k - 1]) + CAP_MARGIN;
      limit *= limit;
    }
    for (size_t e = begin; e < end; ++e)
      if (dist[e] <= limit || dist[e] <= 4.0 * min_distance_sq) kept.push_back(edges[e]);
    begin = end;
  }
  return kept;
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairALIGNN::PairALIGNN(LAMMPS *lmp) : Pair(lmp), cutoff(0.0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // The virial comes from the model's stress (the model evaluates the periodic structure with
  // owner indices and cell shifts, so there are no ghost forces for f.r to sum over).
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairALIGNN::~PairALIGNN()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairALIGNN::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
}

/* ---------------------------------------------------------------------- */

void PairALIGNN::fail_all(const std::string &message)
{
  error->all(FLERR, "pair_style alignn: " + message);
}

// Rank 0 may fail where the others cannot (it alone loads and runs the model): share its
// message so that every rank stops with the same error instead of waiting forever.
void PairALIGNN::check_all(const std::string &message_on_root)
{
  int length = comm->me == 0 ? static_cast<int>(message_on_root.size()) : 0;
  MPI_Bcast(&length, 1, MPI_INT, 0, world);
  if (length == 0) return;
  std::string message(length, ' ');
  if (comm->me == 0) message = message_on_root;
  MPI_Bcast(message.data(), length, MPI_CHAR, 0, world);
  fail_all(message);
}

/* ---------------------------------------------------------------------- */

void PairALIGNN::settings(int narg, char ** /*arg*/)
{
  if (narg != 0)
    fail_all("pair_style alignn takes no arguments; the model and elements are given by "
             "'pair_coeff * * model.pt El1 ... ElN'");
  // Every rank is its own process with its own allocator; all read the same environment.
  try {
    utils::logmesg(lmp, "pair alignn: memory allocator " + apply_malloc_policy() + "\n");
  } catch (const std::invalid_argument &exc) {
    fail_all(exc.what());
  }
}

void PairALIGNN::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes || std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    fail_all("expected 'pair_coeff * * model.pt' followed by one element symbol per atom type (" +
             std::to_string(ntypes) + " types), got " + std::to_string(narg) + " arguments");

  type_z.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    const int z = atomic_number(arg[2 + t]);
    if (z == 0)
      fail_all(std::string("'") + arg[2 + t] + "' (atom type " + std::to_string(t) +
               ") is not an element symbol; every type must map to an element (NULL is not "
               "supported: the model sees the whole structure)");
    type_z[t] = z;
  }
  model_path = arg[2];

  std::string problem;
  double model_cutoff = 0.0;
  if (comm->me == 0) {
    try {
      // With the graph executor's optimisation on, TorchScript differentiates the model
      // symbolically, which measured slower than eager autograd (docs/export.md).
      torch::jit::setGraphExecutorOptimize(false);
      torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
      auto loaded = std::make_unique<Model>();
      loaded->module = torch::jit::load(model_path, torch::kCPU, extra);
      loaded->module.eval();
      if (!loaded->module.find_method("forward_tensors_z") || !loaded->module.hasattr("cutoff"))
        throw std::runtime_error(model_path +
                                 " is not an alignn TorchScript export (no forward_tensors_z "
                                 "method or cutoff attribute); write one with 'alignn export "
                                 "torchscript'");
      model_cutoff = loaded->module.attr("cutoff").toDouble();
      if (loaded->module.hasattr("max_neighbors") && loaded->module.hasattr("min_distance_sq")) {
        loaded->max_neighbors = loaded->module.attr("max_neighbors").toInt();
        loaded->min_distance_sq = loaded->module.attr("min_distance_sq").toDouble();
      }
      if (!(model_cutoff > 0.0)) throw std::runtime_error("the model's cutoff is not positive");
      loaded->dtype = "float ?";    // for the log line only
      if (loaded->module.hasattr("fc")) {
        auto fc = loaded->module.attr("fc").toModule();
        if (fc.hasattr("weight")) {
          const auto type = fc.attr("weight").toTensor().scalar_type();
          loaded->dtype = type == torch::kFloat64   ? "float64"
              : type == torch::kFloat32             ? "float32"
                                                    : c10::toString(type);
        }
      }
      if (loaded->module.hasattr("_species_known")) {
        auto known = loaded->module.attr("_species_known").toTensor();
        for (int t = 1; t <= ntypes; ++t) {
          const long z = type_z[t];
          if (z >= known.size(0) || !known[z].item<bool>())
            throw std::runtime_error(std::string("element ") + ELEMENTS[z - 1] + " (type " +
                                     std::to_string(t) + ") has no atom features in " +
                                     model_path);
        }
      }
      std::string elements;
      for (int t = 1; t <= ntypes; ++t) elements += std::string(" ") + ELEMENTS[type_z[t] - 1];
      utils::logmesg(lmp,
                     "pair alignn: " + model_path + ", cutoff " + std::to_string(model_cutoff) +
                         " A, " + loaded->dtype + ", " +
                         std::to_string(extra["metadata.json"].size()) +
                         " bytes of metadata; types 1.." + std::to_string(ntypes) + " =" +
                         elements + "\n");
      model = std::move(loaded);
    } catch (const std::exception &exc) {
      problem = "cannot use model " + model_path + ": " + short_message(exc);
    }
  }
  check_all(problem);
  MPI_Bcast(&model_cutoff, 1, MPI_DOUBLE, 0, world);
  cutoff = model_cutoff;

  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

/* ---------------------------------------------------------------------- */

void PairALIGNN::init_style()
{
  if (!atom->tag_enable) fail_all("atom IDs are required (atom_modify id yes)");
  if (std::strcmp(update->unit_style, "metal") != 0)
    fail_all("units metal is required (the model works in eV and Angstrom)");
  if (domain->dimension != 3) fail_all("only 3d simulations are supported");
  if (atom->natoms > INT_MAX / 3) fail_all("too many atoms for one model evaluation");
  // A full list: each owned atom sees every neighbour (including ghosts that are images of
  // itself in small cells); the model needs both directions of every bond.
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairALIGNN::init_one(int i, int j)
{
  if (setflag[i][j] == 0) fail_all("all pair coeffs are not set");
  return cutoff;
}

/* ---------------------------------------------------------------------- */

void PairALIGNN::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (eflag_atom || vflag_atom || cvflag_atom)
    fail_all("per-atom energies and virials are not available (the model's energy is a "
             "graph-level readout)");

  double **x = atom->x;
  double **f = atom->f;
  const tagint *tag = atom->tag;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int me = comm->me;
  const int nprocs = comm->nprocs;

  // 1. What this rank contributes: its owned atoms, and every pair (owned i, any j) within the
  //    cutoff as (ID of i, ID of j, x[j] - x[i]). The IDs identify owners on rank 0; the vector
  //    carries the periodic image of j, which rank 0 turns into an integer cell shift.
  std::vector<tagint> my_tags(nlocal);
  std::vector<int> my_types(nlocal);
  std::vector<double> my_x(3 * static_cast<size_t>(nlocal));
  for (int i = 0; i < nlocal; ++i) {
    my_tags[i] = tag[i];
    my_types[i] = type[i];
    for (int k = 0; k < 3; ++k) my_x[3 * i + k] = x[i][k];
  }
  std::vector<tagint> pair_tags;
  std::vector<double> pair_dx;
  const double cut = cutoff + PAIR_PAD;
  const double cutsq_pad = cut * cut;
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    const int jnum = list->numneigh[i];
    for (int jj = 0; jj < jnum; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0];
      const double dy = x[j][1] - x[i][1];
      const double dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz > cutsq_pad) continue;
      pair_tags.push_back(tag[i]);
      pair_tags.push_back(tag[j]);
      pair_dx.push_back(dx);
      pair_dx.push_back(dy);
      pair_dx.push_back(dz);
    }
  }
  const long long my_pairs = static_cast<long long>(pair_tags.size() / 2);

  // 2. Gather everything on rank 0 (MPI counts are ints: refuse what would overflow them).
  long long totals_local[2] = {nlocal, my_pairs}, totals[2] = {0, 0};
  MPI_Allreduce(totals_local, totals, 2, MPI_LONG_LONG, MPI_SUM, world);
  if (totals[0] > INT_MAX / 3 || totals[1] > INT_MAX / 3)
    fail_all("too many atoms or pairs for one model evaluation on one rank");
  int counts_local[2] = {nlocal, static_cast<int>(my_pairs)};
  std::vector<int> counts(me == 0 ? 2 * nprocs : 0);
  MPI_Gather(counts_local, 2, MPI_INT, counts.data(), 2, MPI_INT, 0, world);

  std::vector<int> n1(nprocs), d1(nprocs), n2(nprocs), d2(nprocs), n3(nprocs), d3(nprocs);
  std::vector<int> p2(nprocs), pd2(nprocs), p3(nprocs), pd3(nprocs);
  if (me == 0) {
    int atoms_before = 0, pairs_before = 0;
    for (int r = 0; r < nprocs; ++r) {
      n1[r] = counts[2 * r];
      d1[r] = atoms_before;
      n3[r] = 3 * n1[r];
      d3[r] = 3 * atoms_before;
      p2[r] = 2 * counts[2 * r + 1];
      pd2[r] = 2 * pairs_before;
      p3[r] = 3 * counts[2 * r + 1];
      pd3[r] = 3 * pairs_before;
      atoms_before += counts[2 * r];
      pairs_before += counts[2 * r + 1];
    }
  }
  const int natoms = static_cast<int>(totals[0]);
  const int npairs = static_cast<int>(totals[1]);
  std::vector<tagint> all_tags(me == 0 ? natoms : 0);
  std::vector<int> all_types(me == 0 ? natoms : 0);
  std::vector<double> all_x(me == 0 ? 3 * static_cast<size_t>(natoms) : 0);
  std::vector<tagint> all_pair_tags(me == 0 ? 2 * static_cast<size_t>(npairs) : 0);
  std::vector<double> all_pair_dx(me == 0 ? 3 * static_cast<size_t>(npairs) : 0);
  MPI_Gatherv(my_tags.data(), nlocal, MPI_LMP_TAGINT, all_tags.data(), n1.data(), d1.data(),
              MPI_LMP_TAGINT, 0, world);
  MPI_Gatherv(my_types.data(), nlocal, MPI_INT, all_types.data(), n1.data(), d1.data(), MPI_INT,
              0, world);
  MPI_Gatherv(my_x.data(), 3 * nlocal, MPI_DOUBLE, all_x.data(), n3.data(), d3.data(),
              MPI_DOUBLE, 0, world);
  MPI_Gatherv(pair_tags.data(), static_cast<int>(pair_tags.size()), MPI_LMP_TAGINT,
              all_pair_tags.data(), p2.data(), pd2.data(), MPI_LMP_TAGINT, 0, world);
  MPI_Gatherv(pair_dx.data(), static_cast<int>(pair_dx.size()), MPI_DOUBLE, all_pair_dx.data(),
              p3.data(), pd3.data(), MPI_DOUBLE, 0, world);

  // 3. Rank 0: one structure with atoms ordered by ID (so the result does not depend on the
  //    decomposition), owners and shifts for every pair, one model call.
  const bool want_stress = vflag_global != 0;
  std::vector<double> slot_forces(me == 0 ? 3 * static_cast<size_t>(natoms) : 0);
  double energy = 0.0;
  double stress[3][3] = {{0.0}};
  std::string problem;
  if (me == 0) {
    try {
      std::vector<int> order(natoms);    // order[k] = gathered slot of the k-th smallest ID
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int a, int b) { return all_tags[a] < all_tags[b]; });
      std::vector<tagint> sorted_tags(natoms);
      for (int k = 0; k < natoms; ++k) sorted_tags[k] = all_tags[order[k]];
      for (int k = 1; k < natoms; ++k)
        if (sorted_tags[k] == sorted_tags[k - 1])
          throw std::runtime_error("atom ID " + std::to_string(sorted_tags[k]) +
                                   " is owned twice");
      auto index_of = [&](tagint t) -> int64_t {
        auto it = std::lower_bound(sorted_tags.begin(), sorted_tags.end(), t);
        if (it == sorted_tags.end() || *it != t)
          throw std::runtime_error("neighbour with atom ID " + std::to_string(t) +
                                   " is owned by no rank");
        return it - sorted_tags.begin();
      };

      // Cell rows of the (restricted triclinic) box: a = (xprd, 0, 0), b = (xy, yprd, 0),
      // c = (xz, yz, zprd); r = s . H for fractional row vector s.
      const double xprd = domain->xprd, yprd = domain->yprd, zprd = domain->zprd;
      const double xy = domain->triclinic ? domain->xy : 0.0;
      const double xz = domain->triclinic ? domain->xz : 0.0;
      const double yz = domain->triclinic ? domain->yz : 0.0;
      const double lattice[9] = {xprd, 0.0, 0.0, xy, yprd, 0.0, xz, yz, zprd};
      const int *periodic = domain->periodicity;

      std::vector<double> positions(3 * static_cast<size_t>(natoms));
      std::vector<int64_t> numbers(natoms);
      for (int k = 0; k < natoms; ++k) {
        const int slot = order[k];
        for (int c = 0; c < 3; ++c) positions[3 * k + c] = all_x[3 * slot + c];
        numbers[k] = type_z[all_types[slot]];
      }

      std::vector<Edge> edges(npairs);
      for (int p = 0; p < npairs; ++p) {
        Edge &e = edges[p];
        e.src = index_of(all_pair_tags[2 * p]);
        e.dst = index_of(all_pair_tags[2 * p + 1]);
        // ghost image minus its owner: an integer combination of the cell vectors
        double d[3];
        for (int c = 0; c < 3; ++c)
          d[c] = positions[3 * e.src + c] + all_pair_dx[3 * p + c] - positions[3 * e.dst + c];
        double s[3];
        s[2] = d[2] / zprd;
        s[1] = (d[1] - s[2] * yz) / yprd;
        s[0] = (d[0] - s[1] * xy - s[2] * xz) / xprd;
        for (int c = 0; c < 3; ++c) {
          const double n = std::nearbyint(s[c]);
          if (std::fabs(s[c] - n) > SHIFT_TOLERANCE || (!periodic[c] && n != 0.0))
            throw std::runtime_error(
                "the neighbour image of atom ID " + std::to_string(all_pair_tags[2 * p + 1]) +
                " is not a periodic image of its owner (fractional offset " +
                std::to_string(s[c]) + ")");
          e.shift[c] = static_cast<int>(n);
        }
      }
      // Sorted and unique: every (src, dst, shift) once, in an order that does not depend on
      // the number of ranks (so 1 and N ranks sum the same numbers in the same order).
      std::sort(edges.begin(), edges.end());
      edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
      edges = precap(edges, positions, lattice, model->max_neighbors, model->min_distance_sq);
      const int64_t nedges = static_cast<int64_t>(edges.size());

      auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
      auto i64 = torch::TensorOptions().dtype(torch::kInt64);
      torch::Tensor src = torch::empty({nedges}, i64), dst = torch::empty({nedges}, i64);
      torch::Tensor shift = torch::empty({nedges, 3}, f64);
      int64_t *src_p = src.data_ptr<int64_t>(), *dst_p = dst.data_ptr<int64_t>();
      double *shift_p = shift.data_ptr<double>();
      for (int64_t k = 0; k < nedges; ++k) {
        src_p[k] = edges[k].src;
        dst_p[k] = edges[k].dst;
        for (int c = 0; c < 3; ++c) shift_p[3 * k + c] = edges[k].shift[c];
      }
      std::vector<torch::jit::IValue> inputs{
          torch::from_blob(positions.data(), {natoms, 3}, f64).clone(),
          torch::from_blob(const_cast<double *>(lattice), {3, 3}, f64).clone(),
          torch::from_blob(numbers.data(), {natoms}, i64).clone(),
          src,
          dst,
          shift,
          torch::jit::IValue(want_stress),
      };
      auto result = model->module.get_method("forward_tensors_z")(inputs).toGenericDict();
      energy = result.at("energy").toTensor().to(torch::kFloat64).item<double>();
      auto forces = result.at("forces").toTensor().to(torch::kFloat64).contiguous();
      auto fa = forces.accessor<double, 2>();
      for (int k = 0; k < natoms; ++k)
        for (int c = 0; c < 3; ++c) slot_forces[3 * order[k] + c] = fa[k][c];
      if (want_stress) {
        auto sigma = result.at("stress").toTensor().to(torch::kFloat64).contiguous();
        auto sa = sigma.accessor<double, 2>();
        for (int a = 0; a < 3; ++a)
          for (int b = 0; b < 3; ++b) stress[a][b] = sa[a][b];
      }
    } catch (const std::exception &exc) {
      problem = "model evaluation failed: " + short_message(exc);
    }
  }
  check_all(problem);

  // 4. Forces back to the owners. The energy and virial are counted once, on rank 0 (LAMMPS
  //    sums eng_vdwl and virial over ranks).
  std::vector<double> my_forces(3 * static_cast<size_t>(nlocal));
  MPI_Scatterv(slot_forces.data(), n3.data(), d3.data(), MPI_DOUBLE, my_forces.data(),
               3 * nlocal, MPI_DOUBLE, 0, world);
  for (int i = 0; i < nlocal; ++i)
    for (int c = 0; c < 3; ++c) f[i][c] += my_forces[3 * i + c];

  if (me == 0) {
    if (eflag_global) eng_vdwl += energy;
    if (vflag_global) {
      // LAMMPS' virial W (energy units; pressure = tr W / 3V) from the model's tensile-positive
      // stress in GPa: W = -sigma V.
      const double factor = -(domain->xprd * domain->yprd * domain->zprd) / EV_PER_A3_TO_GPA;
      virial[0] += factor * stress[0][0];
      virial[1] += factor * stress[1][1];
      virial[2] += factor * stress[2][2];
      virial[3] += factor * stress[0][1];
      virial[4] += factor * stress[0][2];
      virial[5] += factor * stress[1][2];
    }
  }
}
