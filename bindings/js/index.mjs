// ESM entry point: the CommonJS implementation (lib/realm.cjs), re-exported by name.
import realm from './lib/realm.cjs';

export const {
  Realm, Model, Session, Generation, Sampler, RealmError, ErrorCode, topK, ABI_VERSION,
  GuestHost, GuestModule, Tenant, runGuest, guestPath, GuestAbiError, GuestStop, GuestFault, GuestTrap,
  GuestLimitError, GUEST_ABI_VERSION,
} = realm;
export default realm;
