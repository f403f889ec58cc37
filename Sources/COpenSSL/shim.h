// OpenSSL's EVP interface, for re-encrypting SQLCipher pages with the library SQLCipher itself
// uses. Only what Swift cannot say is here: building an HMAC context needs an OSSL_PARAM array.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/// An HMAC context keyed with `key` over the digest `digest` ("SHA1", "SHA256", "SHA512"), or
/// NULL. `EVP_MAC_init(ctx, NULL, 0, NULL)` starts a new MAC under the same key.
static inline EVP_MAC_CTX *dbkey_hmac_new(const char *digest, const unsigned char *key, size_t key_length) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) return NULL;
    EVP_MAC_CTX *context = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);
    if (context == NULL) return NULL;
    OSSL_PARAM parameters[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest, 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_init(context, key, key_length, parameters) != 1) {
        EVP_MAC_CTX_free(context);
        return NULL;
    }
    return context;
}
