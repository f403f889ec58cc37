// The PKCS#11 (Cryptoki) types and function list, from p11-kit's header (Debian libp11-kit-dev).
// Nothing is linked: the module named by DBKEY_PKCS11_MODULE is loaded with dlopen at run time.
#include <p11-kit-1/p11-kit/pkcs11.h>
