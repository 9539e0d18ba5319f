/* Runs the functions of a TVM-compiled shared object on its own architecture (the tests: the llvm:aarch64*
 * kernels under qemu-user), loaded by the TVM runtime's module loader as MLC's runtimes load a library.
 * Reads a script from stdin:
 *   buf NAME DTYPE DIMxDIM... FILE|-    a tensor, filled from FILE (raw bytes) or zeros
 *   call FUNCTION NAME... ;             the module's function, with those tensors as its arguments
 *   save NAME FILE                      the tensor's bytes into FILE
 * and exits with status 2 and one line on stderr at the first failure.
 *
 *   run_kernels LIBRARY.so < script */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct {
  char name[64];
  DLTensor tensor;
  int64_t shape[4];
  size_t nbytes;
} Buf;

static Buf bufs[32];
static int nbufs;

static int fail(const char* what, const char* detail) {
  fprintf(stderr, "%s: %s\n", what, detail);
  return 2;
}

static Buf* lookup(const char* name) {
  for (int i = 0; i < nbufs; ++i)
    if (!strcmp(bufs[i].name, name)) return &bufs[i];
  return NULL;
}

static int dtype_of(const char* s, DLDataType* t) {
  static const struct { const char* name; uint8_t code, bits; } known[] = {
      {"int8", kDLInt, 8}, {"int32", kDLInt, 32}, {"uint32", kDLUInt, 32},
      {"float16", kDLFloat, 16}, {"float32", kDLFloat, 32}};
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); ++i)
    if (!strcmp(s, known[i].name)) {
      t->code = known[i].code;
      t->bits = known[i].bits;
      t->lanes = 1;
      return 0;
    }
  return -1;
}

static int add_buf(const char* name, const char* dtype, char* shape, const char* file) {
  if (nbufs == 32) return fail("too many tensors", name);
  Buf* b = &bufs[nbufs++];
  snprintf(b->name, sizeof(b->name), "%s", name);
  if (dtype_of(dtype, &b->tensor.dtype)) return fail("unknown dtype", dtype);
  int ndim = 0;
  size_t count = 1;
  for (char* dim = strtok(shape, "x"); dim; dim = strtok(NULL, "x")) {
    if (ndim == 4) return fail("more than 4 dimensions", name);
    b->shape[ndim] = atoll(dim);
    count *= (size_t)b->shape[ndim++];
  }
  b->nbytes = count * b->tensor.dtype.bits / 8;
  void* data = NULL;
  if (posix_memalign(&data, 64, b->nbytes ? b->nbytes : 64)) return fail("out of memory", name);
  memset(data, 0, b->nbytes);
  b->tensor.data = data;
  b->tensor.device.device_type = kDLCPU;
  b->tensor.ndim = ndim;
  b->tensor.shape = b->shape;
  if (strcmp(file, "-")) {
    FILE* f = fopen(file, "rb");
    if (!f || fread(data, 1, b->nbytes, f) != b->nbytes) return fail("cannot read", file);
    fclose(f);
  }
  return 0;
}

static TVMFFIObjectHandle global_function(const char* name) {
  TVMFFIByteArray bytes = {name, strlen(name)};
  TVMFFIObjectHandle fn = NULL;
  return TVMFFIFunctionGetGlobal(&bytes, &fn) ? NULL : fn;
}

static TVMFFIAny raw_str(const char* s) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}

static int call(TVMFFIAny module, const char* symbol, int nargs, char names[][64]) {
  TVMFFIAny query[3] = {module, raw_str(symbol), {0}};
  query[2].type_index = kTVMFFIBool;
  TVMFFIAny fn;
  memset(&fn, 0, sizeof(fn));
  if (TVMFFIFunctionCall(global_function("ffi.ModuleGetFunction"), query, 3, &fn) || fn.type_index != kTVMFFIFunction)
    return fail("no such function", symbol);
  TVMFFIAny args[16];
  memset(args, 0, sizeof(args));
  for (int i = 0; i < nargs; ++i) {
    Buf* b = lookup(names[i]);
    if (!b) return fail("no such tensor", names[i]);
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].v_ptr = &b->tensor;
  }
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  if (TVMFFIFunctionCall(fn.v_obj, args, nargs, &result)) return fail("kernel failed", symbol);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2) return fail("usage", "harness LIBRARY.so < script");
  /* as MLC's runtimes load a library: the runtime's module loader, which also hands the library its
   * context functions (the thread pool's parallel launch, workspace allocation) */
  TVMFFIObjectHandle load = global_function("ffi.ModuleLoadFromFile");
  TVMFFIAny path = raw_str(argv[1]), lib;
  memset(&lib, 0, sizeof(lib));
  if (!load || TVMFFIFunctionCall(load, &path, 1, &lib) || lib.type_index != kTVMFFIModule) return fail("cannot load", argv[1]);
  char word[512];
  while (scanf("%511s", word) == 1) {
    if (!strcmp(word, "buf")) {
      char name[64], dtype[16], shape[128], file[512];
      if (scanf("%63s %15s %127s %511s", name, dtype, shape, file) != 4) return fail("bad line", "buf");
      if (add_buf(name, dtype, shape, file)) return 2;
    } else if (!strcmp(word, "call")) {
      char symbol[128], names[16][64];
      int nargs = 0;
      if (scanf("%127s", symbol) != 1) return fail("bad line", "call");
      while (nargs < 16 && scanf("%63s", names[nargs]) == 1 && strcmp(names[nargs], ";")) ++nargs;
      if (call(lib, symbol, nargs, names)) return 2;
    } else if (!strcmp(word, "save")) {
      char name[64], file[512];
      if (scanf("%63s %511s", name, file) != 2) return fail("bad line", "save");
      Buf* b = lookup(name);
      FILE* f = b ? fopen(file, "wb") : NULL;
      if (!f || fwrite(b->tensor.data, 1, b->nbytes, f) != b->nbytes) return fail("cannot write", file);
      fclose(f);
    } else {
      return fail("unknown command", word);
    }
  }
  return 0;
}
