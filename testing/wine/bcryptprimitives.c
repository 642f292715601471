/* ProcessPrng for Wine 8 (Debian 12's), which lacks bcryptprimitives.dll.
 * Windows 10 and later have it; Rust's standard library takes its random
 * numbers from it. The tests put this DLL into their own Wine prefix only:
 * it is not shipped. It fills the buffer from RtlGenRandom, the system's
 * cryptographic generator that Wine 8 does have. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
