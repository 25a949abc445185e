/* Test-only stand-in for Windows' bcryptprimitives.dll, which Wine 8 lacks and Rust's standard library imports
 * (ProcessPrng, its source of random bytes since Rust 1.78). It forwards to RtlGenRandom (advapi32's
 * SystemFunction036), which Wine has. Built with MinGW by tests/it/windows.rs next to ferry.exe in the test's
 * folder; never part of a release. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
