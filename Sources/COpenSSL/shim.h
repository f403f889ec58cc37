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

// Certificates and private keys, for a service principal's client certificate (PEM or PKCS #12).
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

static inline int dbkey_no_password(char *buffer, int size, int writing, void *user) {
    (void)buffer; (void)size; (void)writing; (void)user;
    return 0;
}

/// The first private key in PEM `bio`, decrypted with the NUL-terminated `password` or, when it
/// is NULL, refused if encrypted: never a prompt on the terminal (OpenSSL's default callback).
static inline EVP_PKEY *dbkey_pem_private_key(BIO *bio, const char *password) {
    return PEM_read_bio_PrivateKey(bio, NULL, password ? NULL : dbkey_no_password, (void *)password);
}

/// The next certificate in PEM `bio`, or NULL.
static inline X509 *dbkey_pem_certificate(BIO *bio) {
    return PEM_read_bio_X509(bio, NULL, dbkey_no_password, NULL);
}

/// PKCS #12 `data`, decrypted with `password` (NULL or ""), into its key, certificate and the
/// other certificates (`*others` freed with dbkey_x509_stack_free); 1 on success.
static inline int dbkey_pkcs12_parse(const unsigned char *data, long length, const char *password,
                                     EVP_PKEY **key, X509 **certificate, STACK_OF(X509) **others) {
    PKCS12 *bundle = d2i_PKCS12(NULL, &data, length);
    if (bundle == NULL) return 0;
    int parsed = PKCS12_parse(bundle, password, key, certificate, others);
    PKCS12_free(bundle);
    return parsed;
}

static inline int dbkey_x509_stack_count(STACK_OF(X509) *stack) { return stack ? sk_X509_num(stack) : 0; }
static inline X509 *dbkey_x509_stack_value(STACK_OF(X509) *stack, int index) { return sk_X509_value(stack, index); }
static inline void dbkey_x509_stack_free(STACK_OF(X509) *stack) { sk_X509_pop_free(stack, X509_free); }
