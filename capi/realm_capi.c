/*
 * realm_capi.c: the exported C ABI of librealm.so (include/realm.h), written by hand.
 *
 * This file is the set_source() preamble of the cffi embedding build (capi/build_capi.py).  It is
 * pasted after Python.h and cffi's _embedding.h, and after the generated forward declarations of
 * the static extern "Python" twins (_py_realm_*), whose bodies are Python functions in
 * realm_embed/_capi_impl.py.
 *
 * Every exported function follows one pattern:
 *   1. REALM_ENTER: one-time start-up (pthread_once) and a cleared per-thread message; a failed
 *      start-up returns REALM_E_INIT from every function, forever;
 *   2. pointer and size checks that need no Python (NULL, struct_size, NULL buffer with cap > 0);
 *   3. the Python twin, which returns a result code and sets the message itself;
 *   4. realm_leave: the outcome into the caller's realm_error, if any.
 * Python never raises through here: the twins catch everything (see _capi_impl.py), and the
 * def_extern onerror handler covers what escapes them.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "realm.h"

/* The layouts the header promises (REALM_*_SIZE_V1) are the layouts compiled here. */
_Static_assert(sizeof(realm_error) == 1024, "realm_error layout");
_Static_assert(sizeof(realm_model_info) == REALM_MODEL_INFO_SIZE_V1, "realm_model_info layout");
_Static_assert(sizeof(realm_tensor_info) == REALM_TENSOR_INFO_SIZE_V1, "realm_tensor_info layout");
_Static_assert(sizeof(realm_sampler_params) == REALM_SAMPLER_PARAMS_SIZE_V1, "realm_sampler_params layout");
_Static_assert(sizeof(realm_generate_params) == REALM_GENERATE_PARAMS_SIZE_V1, "realm_generate_params layout");
_Static_assert(sizeof(realm_generate_result) == REALM_GENERATE_RESULT_SIZE_V1, "realm_generate_result layout");
_Static_assert(sizeof(realm_session_params) == REALM_SESSION_PARAMS_SIZE_V1, "realm_session_params layout");

/* ==== errors: one message per OS thread ==================================================== */

static __thread char realm_tls_message[REALM_ERROR_MESSAGE_SIZE];

/* Copy src into dst[cap], cut at a UTF-8 character boundary when it does not fit. */
static void realm_copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;                                  /* don't split a multi-byte character */
    }
    memmove(dst, src, n);
    dst[n] = '\0';
}

/* Called from Python (declared in the cdef): the message of the failing call. */
static void _realm_set_error(const char *message)
{
    realm_copy_text(realm_tls_message, sizeof realm_tls_message, message ? message : "");
}

static int32_t realm_fail(int32_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(realm_tls_message, sizeof realm_tls_message, fmt, ap);
    va_end(ap);
    return code;
}

/* The outcome of the call: into *err when given, and the per-thread message. */
static int32_t realm_leave(realm_error *err, int32_t rc)
{
    if (rc == REALM_OK)
        realm_tls_message[0] = '\0';              /* a nested call's message is not ours */
    else if (realm_tls_message[0] == '\0')
        realm_copy_text(realm_tls_message, sizeof realm_tls_message, realm_errstr(rc));
    if (err != NULL) {
        err->code = rc;
        realm_copy_text(err->message, sizeof err->message, realm_tls_message);
    }
    return rc;
}

const char *realm_errstr(int32_t code)
{
    switch (code) {
    case REALM_OK:                 return "ok";
    case REALM_E_INTERNAL:         return "internal error";
    case REALM_E_INIT:             return "the runtime could not start";
    case REALM_E_ARG:              return "invalid argument";
    case REALM_E_NOT_FOUND:        return "not found";
    case REALM_E_RANGE:            return "out of range";
    case REALM_E_BUFFER_TOO_SMALL: return "buffer too small";
    case REALM_E_FORMAT:           return "invalid GGUF";
    case REALM_E_UNSUPPORTED:      return "unsupported";
    case REALM_E_LIMIT:            return "limit reached";
    case REALM_E_BUSY:             return "busy";
    case REALM_E_CONFLICT:         return "conflict";
    case REALM_E_IO:               return "input/output error";
    default:                       return "unknown error code";
    }
}

const char *realm_last_error(void) { return realm_tls_message; }

const char *realm_version(void) { return REALM_VERSION; }

int32_t realm_version_number(void) { return REALM_VERSION_NUMBER; }

int32_t realm_abi_version(void) { return REALM_ABI_VERSION; }

/* ==== start-up ============================================================================= */

static pthread_once_t realm_once = PTHREAD_ONCE_INIT;
static int32_t realm_state = REALM_E_INIT;
static char realm_init_reason[REALM_ERROR_MESSAGE_SIZE] = "start-up did not run";
static char realm_py_reason[REALM_ERROR_MESSAGE_SIZE];     /* set by the Python init code */
static char realm_python_exe[PATH_MAX];
static const char *realm_python_source = "the host process (Python was already running)";
static int realm_started_python;                            /* 1: we started the interpreter */

/* Called from Python (declared in the cdef). */
static void _realm_init_failed(const char *reason)
{
    realm_copy_text(realm_py_reason, sizeof realm_py_reason, reason ? reason : "");
}

static int _realm_started_python(void) { return realm_started_python; }

static int realm_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int realm_is_executable(const char *path)
{
    return realm_is_file(path) && access(path, X_OK) == 0;
}

static int realm_set_python(const char *exe, const char *source)
{
    if (strlen(exe) >= sizeof realm_python_exe)
        return 0;
    strcpy(realm_python_exe, exe);
    realm_python_source = source;
    return 1;
}

/* A venv must be of the Python this library links (pyvenv.cfg says "version = X.Y.Z"). */
static int realm_check_venv_version(const char *venv_dir)
{
    char cfg[PATH_MAX + 16], line[512];
    FILE *f;
    int ok = 1;
    snprintf(cfg, sizeof cfg, "%s/pyvenv.cfg", venv_dir);
    f = fopen(cfg, "r");
    if (f == NULL)
        return 1;
    while (fgets(line, sizeof line, f)) {
        int major, minor;
        char *eq = strchr(line, '=');
        if (eq == NULL || (strncmp(line, "version", 7) != 0))
            continue;
        if (sscanf(eq + 1, " %d.%d", &major, &minor) == 2 &&
            (major != PY_MAJOR_VERSION || minor != PY_MINOR_VERSION)) {
            snprintf(realm_init_reason, sizeof realm_init_reason,
                     "the venv %s is Python %d.%d, but librealm.so was built for Python %d.%d",
                     venv_dir, major, minor, PY_MAJOR_VERSION, PY_MINOR_VERSION);
            ok = 0;
        }
        break;
    }
    fclose(f);
    return ok;
}

/* Which python's environment to start (the order is documented in realm.h). */
static int realm_find_python(void)
{
    const char *env = getenv("REALM_PYTHON");
    char self[PATH_MAX], dir[PATH_MAX], cand[PATH_MAX + 32];
    Dl_info info;
    int have_self = 0;

    if (env != NULL && env[0] != '\0') {
        if (!realm_is_executable(env)) {
            snprintf(realm_init_reason, sizeof realm_init_reason,
                     "REALM_PYTHON=%s is not an executable file", env);
            return 0;
        }
        if (!realm_set_python(env, "REALM_PYTHON")) {
            snprintf(realm_init_reason, sizeof realm_init_reason, "REALM_PYTHON is too long");
            return 0;
        }
        strcpy(dir, env);                         /* <venv>/bin/python -> <venv> */
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(dir, '/');
            if (slash == NULL) { dir[0] = '\0'; break; }
            *slash = '\0';
        }
        return dir[0] == '\0' || realm_check_venv_version(dir);
    }

    if (dladdr((void *)&realm_find_python, &info) && info.dli_fname && realpath(info.dli_fname, self))
        have_self = 1;
    if (have_self) {
        /* 2. the nearest directory above the library holding a pyvenv.cfg */
        strcpy(dir, self);
        for (;;) {
            char *slash = strrchr(dir, '/');
            if (slash == NULL)
                break;
            *slash = '\0';
            snprintf(cand, sizeof cand, "%s/pyvenv.cfg", dir);
            if (realm_is_file(cand)) {
                static const char *names[] = {"python", "python3"};
                for (size_t i = 0; i < 2; i++) {
                    snprintf(cand, sizeof cand, "%s/bin/%s", dir, names[i]);
                    if (realm_is_executable(cand) && realm_set_python(cand, "the venv holding librealm.so"))
                        return realm_check_venv_version(dir);
                }
            }
            if (dir[0] == '\0')
                break;
        }
        /* 3. <prefix>/lib/pythonX.Y/site-packages/... -> <prefix>/bin/pythonX.Y */
        {
            char pattern[64];
            char *hit;
            snprintf(pattern, sizeof pattern, "/lib/python%d.%d/site-packages/", PY_MAJOR_VERSION, PY_MINOR_VERSION);
            hit = strstr(self, pattern);
            if (hit != NULL) {
                snprintf(cand, sizeof cand, "%.*s/bin/python%d.%d", (int)(hit - self), self,
                         PY_MAJOR_VERSION, PY_MINOR_VERSION);
                if (realm_is_executable(cand) && realm_set_python(cand, "the prefix holding librealm.so"))
                    return 1;
            }
        }
    }
#ifdef REALM_BUILD_PYTHON
    /* 4. the python that built the library (an editable install in a source tree) */
    if (realm_is_executable(REALM_BUILD_PYTHON) &&
        realm_set_python(REALM_BUILD_PYTHON, "the python that built librealm.so"))
        return 1;
#endif
    snprintf(realm_init_reason, sizeof realm_init_reason,
             "no Python environment found: REALM_PYTHON is unset, no pyvenv.cfg lies above %s, and "
             "the python that built the library is gone; set REALM_PYTHON to the python of an "
             "environment where realm-embed is installed", have_self ? self : "librealm.so");
    return 0;
}

/* While cffi starts, whatever it prints on this thread goes to a buffer, not to stderr: a failed
 * start-up must not print a traceback into the host's output.  Other threads (a Python host's)
 * still write to the real stderr. */
static const char realm_capture_src[] =
    "import sys, _thread\n"
    "class _Capture:\n"
    "    def __init__(self, orig):\n"
    "        self.orig, self.tid, self.parts = orig, _thread.get_ident(), []\n"
    "    def write(self, s):\n"
    "        if _thread.get_ident() == self.tid:\n"
    "            self.parts.append(str(s))\n"
    "            return len(s)\n"
    "        return self.orig.write(s) if self.orig is not None else len(s)\n"
    "    def flush(self):\n"
    "        if self.orig is not None and _thread.get_ident() != self.tid:\n"
    "            self.orig.flush()\n"
    "    def __getattr__(self, name):\n"
    "        return getattr(self.orig, name)\n"
    "_cap = _Capture(sys.stderr)\n"
    "sys.stderr = _cap\n"
    "def _capture_end():\n"
    "    if sys.stderr is _cap:\n"
    "        sys.stderr = _cap.orig\n"
    "    text = ''.join(_cap.parts).split('\\nFrom: ')[0]\n"
    "    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln[:1].isspace()]\n"
    "    return lines[-1] if lines else ''\n";

static PyObject *realm_capture_begin(void)
{
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *ns = PyDict_New(), *r = NULL;
    if (ns != NULL && PyDict_SetItemString(ns, "__builtins__", PyEval_GetBuiltins()) == 0)
        r = PyRun_String(realm_capture_src, Py_file_input, ns, ns);
    if (r == NULL) {
        PyErr_Clear();
        Py_CLEAR(ns);
    }
    Py_XDECREF(r);
    PyGILState_Release(g);
    return ns;
}

static void realm_capture_end(PyObject *ns, char *out, size_t cap)
{
    PyGILState_STATE g;
    PyObject *r;
    out[0] = '\0';
    if (ns == NULL)
        return;
    g = PyGILState_Ensure();
    r = PyRun_String("_capture_end()", Py_eval_input, ns, ns);
    if (r != NULL && PyUnicode_Check(r)) {
        const char *s = PyUnicode_AsUTF8(r);
        if (s != NULL)
            realm_copy_text(out, cap, s);
    }
    Py_XDECREF(r);
    PyErr_Clear();
    Py_DECREF(ns);
    PyGILState_Release(g);
}

/* cffi_start_python(), safe in a host whose Python already ran.  Before Python 3.12 cffi's
 * start-up (_cffi_carefully_make_gil) takes a spin lock by swapping PyCapsule_Type.tp_version_tag
 * from 0, and spins forever if it is not 0.  It is not 0 once the host's Python looked up an
 * attribute through the type cache on a capsule (importing torch does): a Python host then hung
 * in its first call.  The tag goes to 0 for cffi's start-up and comes back afterwards; while it
 * is 0 the type cache merely misses on capsules. */
static int realm_cffi_start(void)
{
    int rc;
#if PY_VERSION_HEX < 0x030C0000
    PyGILState_STATE g = PyGILState_Ensure();
    unsigned int tag = PyCapsule_Type.tp_version_tag;
    PyCapsule_Type.tp_version_tag = 0;
    PyGILState_Release(g);
    rc = cffi_start_python();
    g = PyGILState_Ensure();
    if (PyCapsule_Type.tp_version_tag == 0)
        PyCapsule_Type.tp_version_tag = tag;
    PyGILState_Release(g);
#else
    rc = cffi_start_python();
#endif
    return rc;
}

static void realm_do_init(void)
{
    Dl_info info;
    PyObject *capture;
    char captured[REALM_ERROR_MESSAGE_SIZE];
    const char *why;

    /* (1) Extension modules (_cffi_backend, numpy, torch) are not linked against libpython: its
     * symbols must be global even when the host dlopen()ed us RTLD_LOCAL. */
    if (dladdr((void *)&Py_IsInitialized, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);

    /* (2) Start CPython ourselves, isolated from PYTHON* variables, as the venv's python would
     * start: getpath applies its pyvenv.cfg.  A Python host's interpreter is reused as is. */
    if (!Py_IsInitialized()) {
        PyConfig cfg;
        PyStatus st;
        if (!realm_find_python())
            return;
        PyConfig_InitIsolatedConfig(&cfg);
        cfg.install_signal_handlers = 0;          /* the host keeps SIGINT, SIGSEGV (Go!) */
        cfg.buffered_stdio = 0;                   /* nobody calls Py_Finalize: don't lose output */
        cfg.pathconfig_warnings = 0;              /* getpath prints nothing */
        cfg.user_site_directory = 0;
        st = PyConfig_SetBytesString(&cfg, &cfg.executable, realm_python_exe);
        if (!PyStatus_Exception(st))
            st = Py_InitializeFromConfig(&cfg);   /* returns a status, never exit()s */
        PyConfig_Clear(&cfg);
        if (PyStatus_Exception(st)) {
            snprintf(realm_init_reason, sizeof realm_init_reason,
                     "Python %s (found via %s) could not start: %s%s%s", realm_python_exe,
                     realm_python_source, st.func ? st.func : "", st.func ? ": " : "",
                     st.err_msg ? st.err_msg : "unknown error");
            return;
        }
        realm_started_python = 1;
        (void)PyEval_SaveThread();                /* cffi expects the GIL released */
    }

    /* (3) cffi creates the module and runs the init code (realm_embed._capi_impl.install). */
    capture = realm_capture_begin();
    if (realm_cffi_start() != 0) {
        realm_capture_end(capture, captured, sizeof captured);
        why = realm_py_reason[0] ? realm_py_reason : captured[0] ? captured : "cffi_start_python() failed";
        if (realm_started_python)
            snprintf(realm_init_reason, sizeof realm_init_reason,
                     "Python %s (found via %s) cannot load realm-embed: %s; set REALM_PYTHON to the "
                     "python of an environment where realm-embed is installed",
                     realm_python_exe, realm_python_source, why);
        else
            snprintf(realm_init_reason, sizeof realm_init_reason,
                     "the host's Python cannot load realm-embed: %s", why);
        return;
    }
    realm_capture_end(capture, captured, sizeof captured);
    realm_state = REALM_OK;
}

static int32_t realm_enter(const char *fn)
{
    realm_tls_message[0] = '\0';
    pthread_once(&realm_once, realm_do_init);
    if (realm_state != REALM_OK)
        return realm_fail(REALM_E_INIT, "%s: the runtime failed to start: %s", fn, realm_init_reason);
    return REALM_OK;
}

/* ==== the wrapper pattern ================================================================== */

#define REALM_ENTER(err)                                                                        \
    do {                                                                                        \
        int32_t rc_ = realm_enter(__func__);                                                    \
        if (rc_ != REALM_OK)                                                                    \
            return realm_leave((err), rc_);                                                     \
    } while (0)

#define REALM_CHECK(cond, err, ...)                                                             \
    do {                                                                                        \
        if (!(cond))                                                                            \
            return realm_leave((err), realm_fail(REALM_E_ARG, __VA_ARGS__));                    \
    } while (0)

/* A required pointer. */
#define REALM_NONNULL(p, err) REALM_CHECK((p) != NULL, err, "%s: %s is NULL", __func__, #p)

/* An input array: NULL only when empty. */
#define REALM_ARRAY(p, n, err)                                                                  \
    REALM_CHECK((p) != NULL || (n) == 0, err, "%s: %s is NULL but %s is %zu", __func__, #p, #n, \
                (size_t)(n))

/* An output buffer: NULL only for a size query (cap 0). */
#define REALM_BUFFER(p, cap, err)                                                               \
    REALM_CHECK((p) != NULL || (cap) == 0, err,                                                 \
                "%s: %s is NULL but %s is %zu (a size query passes NULL and 0)", __func__, #p,  \
                #cap, (size_t)(cap))

/* A versioned struct: struct_size at least the first version's size. */
#define REALM_STRUCT(p, min, type, err)                                                         \
    REALM_CHECK((p)->struct_size >= (min), err,                                                 \
                "%s: %s->struct_size is %u, expected sizeof(" #type ") = %zu (at least %u)",    \
                __func__, #p, (unsigned)(p)->struct_size, sizeof(type), (unsigned)(min))

/* Copy the fields of a full struct that fit in the caller's struct_size (struct_size is kept). */
static void realm_copy_out(void *dst, const void *src, uint32_t dst_size, size_t src_size)
{
    size_t n = dst_size < src_size ? dst_size : src_size;
    memcpy((char *)dst + sizeof(uint32_t), (const char *)src + sizeof(uint32_t), n - sizeof(uint32_t));
}

/* Read a caller's options struct into a full one holding the defaults. */
static void realm_copy_in(void *dst, const void *src, size_t dst_size)
{
    uint32_t src_size = *(const uint32_t *)src;
    size_t n = src_size < dst_size ? src_size : dst_size;
    memcpy((char *)dst + sizeof(uint32_t), (const char *)src + sizeof(uint32_t), n - sizeof(uint32_t));
}

/* ==== lifecycle ============================================================================ */

int32_t realm_init(realm_error *err)
{
    REALM_ENTER(err);
    return realm_leave(err, REALM_OK);
}

/* ==== models =============================================================================== */

int32_t realm_model_store(const void *data, size_t size, uint64_t requested_id, uint64_t *model_out,
                          realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(data, err);
    REALM_NONNULL(model_out, err);
    REALM_CHECK(size > 0, err, "%s: size is 0 (no GGUF bytes)", __func__);
    return realm_leave(err, _py_realm_model_store(data, size, requested_id, model_out));
}

int32_t realm_model_store_file(const char *path, uint64_t requested_id, uint64_t *model_out,
                               realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(path, err);
    REALM_NONNULL(model_out, err);
    return realm_leave(err, _py_realm_model_store_file(path, requested_id, model_out));
}

int32_t realm_model_store_default(uint64_t requested_id, uint64_t *model_out, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(model_out, err);
    return realm_leave(err, _py_realm_model_store_default(requested_id, model_out));
}

int32_t realm_model_remove(uint64_t model, realm_error *err)
{
    REALM_ENTER(err);
    if (model == 0)
        return realm_leave(err, REALM_OK);
    return realm_leave(err, _py_realm_model_remove(model));
}

int32_t realm_model_info_get(uint64_t model, realm_model_info *info, realm_error *err)
{
    realm_model_info full;
    int32_t rc;
    REALM_ENTER(err);
    REALM_NONNULL(info, err);
    REALM_STRUCT(info, REALM_MODEL_INFO_SIZE_V1, realm_model_info, err);
    memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    rc = _py_realm_model_info_get(model, &full);
    if (rc == REALM_OK)
        realm_copy_out(info, &full, info->struct_size, sizeof full);
    return realm_leave(err, rc);
}

int32_t realm_model_info_string(uint64_t model, int32_t key, char *text, size_t text_cap, size_t *size,
                                realm_error *err)
{
    REALM_ENTER(err);
    REALM_BUFFER(text, text_cap, err);
    REALM_NONNULL(size, err);
    return realm_leave(err, _py_realm_model_info_string(model, key, text, text_cap, size));
}

int32_t realm_model_tensor_name(uint64_t model, size_t index, char *name, size_t name_cap, size_t *size,
                                realm_error *err)
{
    REALM_ENTER(err);
    REALM_BUFFER(name, name_cap, err);
    REALM_NONNULL(size, err);
    return realm_leave(err, _py_realm_model_tensor_name(model, index, name, name_cap, size));
}

int32_t realm_tensor_info_get(uint64_t model, const char *name, realm_tensor_info *info, realm_error *err)
{
    realm_tensor_info full;
    int32_t rc;
    REALM_ENTER(err);
    REALM_NONNULL(name, err);
    REALM_NONNULL(info, err);
    REALM_STRUCT(info, REALM_TENSOR_INFO_SIZE_V1, realm_tensor_info, err);
    memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    rc = _py_realm_tensor_info_get(model, name, &full);
    if (rc == REALM_OK)
        realm_copy_out(info, &full, info->struct_size, sizeof full);
    return realm_leave(err, rc);
}

int32_t realm_tensor_get_f32(uint64_t model, const char *name, float *out, size_t out_cap, size_t *n_floats,
                             realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(name, err);
    REALM_BUFFER(out, out_cap, err);
    REALM_NONNULL(n_floats, err);
    return realm_leave(err, _py_realm_tensor_get_f32(model, name, out, out_cap, n_floats));
}

/* ==== sessions ============================================================================= */

int32_t realm_session_create(uint64_t model, uint32_t n_ctx, uint64_t *session_out, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(session_out, err);
    return realm_leave(err, _py_realm_session_create(model, n_ctx, session_out));
}

void realm_session_params_default(realm_session_params *params)
{
    static const realm_session_params defaults = REALM_SESSION_PARAMS_INIT;
    if (params != NULL)
        *params = defaults;
}

int32_t realm_session_create_ex(uint64_t model, const realm_session_params *params, uint64_t *session_out,
                                realm_error *err)
{
    realm_session_params full;
    REALM_ENTER(err);
    REALM_NONNULL(session_out, err);
    realm_session_params_default(&full);
    if (params != NULL) {
        REALM_STRUCT(params, REALM_SESSION_PARAMS_SIZE_V1, realm_session_params, err);
        realm_copy_in(&full, params, sizeof full);
    }
    return realm_leave(err, _py_realm_session_create_ex(model, &full, session_out));
}

int32_t realm_session_fork(uint64_t session, uint64_t *session_out, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(session_out, err);
    return realm_leave(err, _py_realm_session_fork(session, session_out));
}

int32_t realm_session_reset(uint64_t session, realm_error *err)
{
    REALM_ENTER(err);
    return realm_leave(err, _py_realm_session_reset(session));
}

int32_t realm_session_truncate(uint64_t session, uint32_t n_tokens, realm_error *err)
{
    REALM_ENTER(err);
    return realm_leave(err, _py_realm_session_truncate(session, n_tokens));
}

int32_t realm_session_free(uint64_t session, realm_error *err)
{
    REALM_ENTER(err);
    if (session == 0)
        return realm_leave(err, REALM_OK);
    return realm_leave(err, _py_realm_session_free(session));
}

int32_t realm_session_n_tokens(uint64_t session, uint32_t *n_tokens, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(n_tokens, err);
    return realm_leave(err, _py_realm_session_n_tokens(session, n_tokens));
}

int32_t realm_session_n_ctx(uint64_t session, uint32_t *n_ctx, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(n_ctx, err);
    return realm_leave(err, _py_realm_session_n_ctx(session, n_ctx));
}

int32_t realm_session_model(uint64_t session, uint64_t *model_out, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(model_out, err);
    return realm_leave(err, _py_realm_session_model(session, model_out));
}

/* ==== compute ============================================================================== */

int32_t realm_embed_tokens(uint64_t session, const int32_t *ids, size_t n_tokens, float *out, size_t out_cap,
                           realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(ids, n_tokens, err);
    REALM_NONNULL(out, err);
    return realm_leave(err, _py_realm_embed_tokens(session, ids, n_tokens, out, out_cap));
}

int32_t realm_forward_layer(uint64_t session, uint32_t layer, uint32_t pos, const float *hidden,
                            size_t n_tokens, size_t n_embd, float *out, size_t out_cap, realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(hidden, n_tokens, err);
    REALM_NONNULL(out, err);
    return realm_leave(err, _py_realm_forward_layer(session, layer, pos, hidden, n_tokens, n_embd, out, out_cap));
}

int32_t realm_compute_logits(uint64_t session, const float *hidden, size_t n_tokens, size_t n_embd,
                             float *logits, size_t logits_cap, realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(hidden, n_tokens, err);
    REALM_NONNULL(logits, err);
    return realm_leave(err, _py_realm_compute_logits(session, hidden, n_tokens, n_embd, logits, logits_cap));
}

int32_t realm_decode(uint64_t session, const int32_t *ids, size_t n_tokens, uint32_t flags, float *logits,
                     size_t logits_cap, realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(ids, n_tokens, err);
    REALM_NONNULL(logits, err);
    return realm_leave(err, _py_realm_decode(session, ids, n_tokens, flags, logits, logits_cap));
}

/* ==== text ================================================================================= */

int32_t realm_tokenize(uint64_t model, const char *text, size_t text_len, uint32_t flags, int32_t *ids,
                       size_t ids_cap, size_t *n_ids, realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(text, text_len, err);
    REALM_BUFFER(ids, ids_cap, err);
    REALM_NONNULL(n_ids, err);
    return realm_leave(err, _py_realm_tokenize(model, text, text_len, flags, ids, ids_cap, n_ids));
}

int32_t realm_detokenize(uint64_t model, const int32_t *ids, size_t n_ids, char *text, size_t text_cap,
                         size_t *size, realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(ids, n_ids, err);
    REALM_BUFFER(text, text_cap, err);
    REALM_NONNULL(size, err);
    return realm_leave(err, _py_realm_detokenize(model, ids, n_ids, text, text_cap, size));
}

int32_t realm_token_piece(uint64_t model, int32_t token, char *piece, size_t piece_cap, size_t *size,
                          realm_error *err)
{
    REALM_ENTER(err);
    REALM_BUFFER(piece, piece_cap, err);
    REALM_NONNULL(size, err);
    return realm_leave(err, _py_realm_token_piece(model, token, piece, piece_cap, size));
}

int32_t realm_chat_template(uint64_t model, const char *const *roles, const char *const *contents,
                            size_t n_messages, uint32_t flags, char *text, size_t text_cap, size_t *size,
                            realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(roles, n_messages, err);
    REALM_ARRAY(contents, n_messages, err);
    for (size_t i = 0; i < n_messages; i++) {
        REALM_CHECK(roles[i] != NULL, err, "%s: roles[%zu] is NULL", __func__, i);
        REALM_CHECK(contents[i] != NULL, err, "%s: contents[%zu] is NULL", __func__, i);
    }
    REALM_BUFFER(text, text_cap, err);
    REALM_NONNULL(size, err);
    return realm_leave(err, _py_realm_chat_template(model, roles, contents, n_messages, flags, text, text_cap, size));
}

int32_t realm_chat_template_json(uint64_t model, const char *messages_json, uint32_t flags, char *text,
                                 size_t text_cap, size_t *size, realm_error *err)
{
    REALM_ENTER(err);
    REALM_NONNULL(messages_json, err);
    REALM_BUFFER(text, text_cap, err);
    REALM_NONNULL(size, err);
    return realm_leave(err, _py_realm_chat_template_json(model, messages_json, flags, text, text_cap, size));
}

/* ==== sampling ============================================================================= */

void realm_sampler_params_default(realm_sampler_params *params)
{
    static const realm_sampler_params defaults = REALM_SAMPLER_PARAMS_INIT;
    if (params != NULL)
        *params = defaults;
}

int32_t realm_sampler_create(const realm_sampler_params *params, uint64_t *sampler_out, realm_error *err)
{
    realm_sampler_params full;
    REALM_ENTER(err);
    REALM_NONNULL(sampler_out, err);
    realm_sampler_params_default(&full);
    if (params != NULL) {
        REALM_STRUCT(params, REALM_SAMPLER_PARAMS_SIZE_V1, realm_sampler_params, err);
        realm_copy_in(&full, params, sizeof full);
    }
    return realm_leave(err, _py_realm_sampler_create(&full, sampler_out));
}

int32_t realm_sampler_sample(uint64_t sampler, const float *logits, size_t n_logits, const int32_t *history,
                             size_t n_history, int32_t *token_out, realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(logits, n_logits, err);
    REALM_ARRAY(history, n_history, err);
    REALM_NONNULL(token_out, err);
    return realm_leave(err, _py_realm_sampler_sample(sampler, logits, n_logits, history, n_history, token_out));
}

int32_t realm_sampler_free(uint64_t sampler, realm_error *err)
{
    REALM_ENTER(err);
    if (sampler == 0)
        return realm_leave(err, REALM_OK);
    return realm_leave(err, _py_realm_sampler_free(sampler));
}

int32_t realm_top_k(const float *logits, size_t n_logits, size_t k, float *values, int32_t *ids, size_t *n_out,
                    realm_error *err)
{
    REALM_ENTER(err);
    REALM_ARRAY(logits, n_logits, err);
    REALM_NONNULL(values, err);
    REALM_NONNULL(ids, err);
    REALM_NONNULL(n_out, err);
    return realm_leave(err, _py_realm_top_k(logits, n_logits, k, values, ids, n_out));
}

/* ==== generation =========================================================================== */

void realm_generate_params_default(realm_generate_params *params)
{
    static const realm_generate_params defaults = REALM_GENERATE_PARAMS_INIT;
    if (params != NULL)
        *params = defaults;
}

/* The caller's params, normalized to full structs (defaults for what an older caller lacks). */
#define REALM_GENERATE_PREPARE(params, gp, sp, result, err)                                     \
    do {                                                                                        \
        realm_generate_params_default(&(gp));                                                   \
        if ((params) != NULL) {                                                                 \
            REALM_STRUCT(params, REALM_GENERATE_PARAMS_SIZE_V1, realm_generate_params, err);    \
            realm_copy_in(&(gp), (params), sizeof(gp));                                         \
        }                                                                                       \
        REALM_ARRAY((gp).stop, (gp).n_stop, err);                                               \
        for (size_t i_ = 0; i_ < (gp).n_stop; i_++)                                             \
            REALM_CHECK((gp).stop[i_] != NULL, err, "%s: params->stop[%zu] is NULL", __func__, i_); \
        if ((gp).sampler != NULL) {                                                             \
            const realm_sampler_params *in_ = (gp).sampler;                                     \
            REALM_CHECK(in_->struct_size >= REALM_SAMPLER_PARAMS_SIZE_V1, err,                   \
                        "%s: params->sampler->struct_size is %u, expected sizeof(realm_sampler_params) = %zu", \
                        __func__, (unsigned)in_->struct_size, sizeof(realm_sampler_params));     \
            realm_sampler_params_default(&(sp));                                                \
            realm_copy_in(&(sp), in_, sizeof(sp));                                              \
            (gp).sampler = &(sp);                                                               \
        }                                                                                       \
        if ((result) != NULL)                                                                   \
            REALM_STRUCT(result, REALM_GENERATE_RESULT_SIZE_V1, realm_generate_result, err);     \
    } while (0)

int32_t realm_generate(uint64_t session, const char *prompt, size_t prompt_len,
                       const realm_generate_params *params, realm_generate_result *result, realm_error *err)
{
    realm_generate_params gp;
    realm_sampler_params sp;
    realm_generate_result full = REALM_GENERATE_RESULT_INIT;
    int32_t rc;
    REALM_ENTER(err);
    REALM_ARRAY(prompt, prompt_len, err);
    REALM_GENERATE_PREPARE(params, gp, sp, result, err);
    rc = _py_realm_generate(session, prompt, prompt_len, &gp, &full);
    if (rc == REALM_OK && result != NULL)
        realm_copy_out(result, &full, result->struct_size, sizeof full);
    return realm_leave(err, rc);
}

int32_t realm_generate_tokens(uint64_t session, const int32_t *ids, size_t n_ids,
                              const realm_generate_params *params, realm_generate_result *result,
                              realm_error *err)
{
    realm_generate_params gp;
    realm_sampler_params sp;
    realm_generate_result full = REALM_GENERATE_RESULT_INIT;
    int32_t rc;
    REALM_ENTER(err);
    REALM_ARRAY(ids, n_ids, err);
    REALM_GENERATE_PREPARE(params, gp, sp, result, err);
    rc = _py_realm_generate_tokens(session, ids, n_ids, &gp, &full);
    if (rc == REALM_OK && result != NULL)
        realm_copy_out(result, &full, result->struct_size, sizeof full);
    return realm_leave(err, rc);
}
