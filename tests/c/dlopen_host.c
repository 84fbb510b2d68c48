/*
 * dlopen_host.c: a host that loads librealm.so at run time with RTLD_LOCAL (as koffi and most
 * plugin loaders do), so libpython's symbols are not global unless the library makes them so
 * (embedding.md pitfall 2: "undefined symbol: PyExc_SystemError" from _cffi_backend).
 *
 *   dlopen_host /path/to/librealm.so      prints "ok <model id>" and exits 0 on success
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>

typedef int32_t (*init_fn)(void *err);
typedef int32_t (*store_fn)(uint64_t requested_id, uint64_t *model_out, void *err);
typedef int32_t (*remove_fn)(uint64_t model, void *err);
typedef const char *(*last_error_fn)(void);

int main(int argc, char **argv)
{
    void *lib;
    init_fn init;
    store_fn store;
    remove_fn remove_model;
    last_error_fn last_error;
    uint64_t model = 0;

    if (argc != 2)
        return 2;
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        printf("dlopen failed: %s\n", dlerror());
        return 1;
    }
    init = (init_fn)dlsym(lib, "realm_init");
    store = (store_fn)dlsym(lib, "realm_model_store_default");
    remove_model = (remove_fn)dlsym(lib, "realm_model_remove");
    last_error = (last_error_fn)dlsym(lib, "realm_last_error");
    if (!init || !store || !remove_model || !last_error) {
        printf("dlsym failed: %s\n", dlerror());
        return 1;
    }
    if (init(NULL) != 0 || store(0, &model, NULL) != 0) {
        printf("failed: %s\n", last_error());
        return 1;
    }
    printf("ok %llx\n", (unsigned long long)model);
    return remove_model(model, NULL) != 0;
}
