// The thin 1:1 layer (lib/native.cjs): koffi functions named and typed as in include/realm.h.
// Pointer parameters take Buffers and typed arrays; see the comment at the top of lib/native.cjs.

/** A koffi function: call it synchronously, or with .async(...args, callback) on a libuv pool thread. */
export interface NativeFunction {
  (...args: unknown[]): any;
  async(...args: unknown[]): void;
}

export type NativeLibrary = { readonly [name: `realm_${string}`]: NativeFunction };

/** The REALM_ABI_VERSION this binding was written for. */
export const ABI_VERSION: number;
/** REALM_OK and the REALM_E_* result codes. */
export const CODES: Readonly<Record<string, number>>;
/** Every integer constant of realm.h the binding uses (codes, flags, struct sizes). */
export const CONSTANTS: Readonly<Record<string, number | bigint>>;
/** The function declarations, exactly as realm.h writes them (whitespace collapsed). */
export const DECLARATIONS: readonly string[];
/** sizeof(realm_error). */
export const ERROR_SIZE: number;
/** koffi types of realm.h's structs and the token callback. */
export const types: Readonly<Record<string, unknown>>;
/** The koffi module the binding uses. */
export const koffi: any;

/** "REALM_E_NOT_FOUND" for -4. */
export function codeName(code: number): string;
/** Where librealm.so is: $REALM_LIB, else `${REALM_PYTHON:-python3} -m realm_embed config --library`. */
export function locate(env?: Record<string, string | undefined>): { path: string; how: string };
/** Load the library (once per thread) and declare every function; refuses another ABI version. */
export function load(path?: string): NativeLibrary;
/** The path the library was loaded from, or null. */
export function loadedPath(): string | null;
