// The TPM2 Software Stack's Enhanced System API (ESAPI), from Debian's libtss2-dev, and the few
// sequences of its calls the TPM provider makes, kept in C where the TSS's structures are
// natural to fill. No TPM command is built here: every exchange is an Esys_ call.
#include <string.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

/// The persistent handle of the storage root key, as the TCG's provisioning guidance places it.
static const TPM2_HANDLE DBKEY_TPM_SRK_HANDLE = 0x81000001;

/// A selection of PCRs of the SHA-256 bank (`mask` bit n is PCR n, n < 24).
static inline void dbkey_tpm_selection(TPML_PCR_SELECTION *selection, uint32_t mask) {
    memset(selection, 0, sizeof(*selection));
    selection->count = mask ? 1 : 0;
    selection->pcrSelections[0].hash = TPM2_ALG_SHA256;
    selection->pcrSelections[0].sizeofSelect = 3;
    selection->pcrSelections[0].pcrSelect[0] = mask & 0xFF;
    selection->pcrSelections[0].pcrSelect[1] = (mask >> 8) & 0xFF;
    selection->pcrSelections[0].pcrSelect[2] = (mask >> 16) & 0xFF;
}

/// The storage root key: the persistent object at 0x81000001, or, when there is none, a primary
/// key of the TCG's SRK template (RSA 2048, AES-128-CFB, restricted decrypt) made under the
/// owner hierarchy and made persistent there (what `tpm2_createprimary -C o` then
/// `tpm2_evictcontrol -C o -c … 0x81000001` do).
static inline TSS2_RC dbkey_tpm_srk(ESYS_CONTEXT *context, ESYS_TR *srk) {
    TSS2_RC rc = Esys_TR_FromTPMPublic(context, DBKEY_TPM_SRK_HANDLE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, srk);
    if (rc == TSS2_RC_SUCCESS) return rc;
    TPM2B_SENSITIVE_CREATE sensitive = {0};
    TPM2B_PUBLIC template = {0};
    template.publicArea.type = TPM2_ALG_RSA;
    template.publicArea.nameAlg = TPM2_ALG_SHA256;
    template.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
        TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED |
        TPMA_OBJECT_DECRYPT;
    template.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
    template.publicArea.parameters.rsaDetail.symmetric.keyBits.aes = 128;
    template.publicArea.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
    template.publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
    template.publicArea.parameters.rsaDetail.keyBits = 2048;
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION none = {0};
    ESYS_TR transient = ESYS_TR_NONE;
    rc = Esys_CreatePrimary(context, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
        &template, &outside, &none, &transient, NULL, NULL, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) return rc;
    rc = Esys_EvictControl(context, ESYS_TR_RH_OWNER, transient, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
        DBKEY_TPM_SRK_HANDLE, srk);
    Esys_FlushContext(context, transient);
    return rc;
}

/// A policy session (or a trial one, to compute a digest) bound to the PCRs of `mask`.
static inline TSS2_RC dbkey_tpm_pcr_session(ESYS_CONTEXT *context, uint32_t mask, TPM2_SE type, ESYS_TR *session) {
    TPMT_SYM_DEF symmetric = {.algorithm = TPM2_ALG_NULL};
    TSS2_RC rc = Esys_StartAuthSession(context, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
        NULL, type, &symmetric, TPM2_ALG_SHA256, session);
    if (rc != TSS2_RC_SUCCESS) return rc;
    TPML_PCR_SELECTION selection;
    dbkey_tpm_selection(&selection, mask);
    TPM2B_DIGEST empty = {0};
    rc = Esys_PolicyPCR(context, *session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &empty, &selection);
    if (rc != TSS2_RC_SUCCESS) Esys_FlushContext(context, *session);
    return rc;
}

/// Seals `data` under the SRK (bound to the PCRs of `mask` when it is not 0) and writes the
/// marshaled TPM2B_PUBLIC then TPM2B_PRIVATE, as `tpm2_create -u -r` writes them, to `blob`.
static inline TSS2_RC dbkey_tpm_seal(ESYS_CONTEXT *context, ESYS_TR srk, const uint8_t *data, size_t length,
    uint32_t mask, uint8_t *blob, size_t capacity, size_t *written) {
    TPM2B_SENSITIVE_CREATE sensitive = {0};
    if (length > sizeof(sensitive.sensitive.data.buffer)) return TSS2_ESYS_RC_BAD_VALUE;
    sensitive.sensitive.data.size = (UINT16)length;
    memcpy(sensitive.sensitive.data.buffer, data, length);
    TPM2B_PUBLIC template = {0};
    template.publicArea.type = TPM2_ALG_KEYEDHASH;
    template.publicArea.nameAlg = TPM2_ALG_SHA256;
    template.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
    template.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
    TSS2_RC rc;
    if (mask) {
        ESYS_TR trial;
        rc = dbkey_tpm_pcr_session(context, mask, TPM2_SE_TRIAL, &trial);
        if (rc != TSS2_RC_SUCCESS) return rc;
        TPM2B_DIGEST *digest = NULL;
        rc = Esys_PolicyGetDigest(context, trial, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &digest);
        Esys_FlushContext(context, trial);
        if (rc != TSS2_RC_SUCCESS) return rc;
        template.publicArea.authPolicy = *digest;
        Esys_Free(digest);
    } else {
        template.publicArea.objectAttributes |= TPMA_OBJECT_USERWITHAUTH;
    }
    TPM2B_DATA outside = {0};
    TPML_PCR_SELECTION none = {0};
    TPM2B_PRIVATE *private = NULL;
    TPM2B_PUBLIC *public = NULL;
    rc = Esys_Create(context, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &template, &outside,
        &none, &private, &public, NULL, NULL, NULL);
    memset(&sensitive, 0, sizeof(sensitive));
    if (rc != TSS2_RC_SUCCESS) return rc;
    size_t offset = 0;
    rc = Tss2_MU_TPM2B_PUBLIC_Marshal(public, blob, capacity, &offset);
    if (rc == TSS2_RC_SUCCESS) rc = Tss2_MU_TPM2B_PRIVATE_Marshal(private, blob, capacity, &offset);
    *written = offset;
    Esys_Free(private);
    Esys_Free(public);
    return rc;
}

/// Loads a sealed object (TPM2B_PUBLIC then TPM2B_PRIVATE) under the SRK and unseals it, through
/// a PCR policy session when `mask` is not 0. `*stage` tells which call failed: 1 unmarshal,
/// 2 load, 3 policy, 4 unseal.
static inline TSS2_RC dbkey_tpm_unseal(ESYS_CONTEXT *context, ESYS_TR srk, const uint8_t *blob, size_t length,
    uint32_t mask, uint8_t *out, size_t capacity, size_t *written, int *stage) {
    TPM2B_PUBLIC public = {0};
    TPM2B_PRIVATE private = {0};
    size_t offset = 0;
    *stage = 1;
    TSS2_RC rc = Tss2_MU_TPM2B_PUBLIC_Unmarshal(blob, length, &offset, &public);
    if (rc == TSS2_RC_SUCCESS) rc = Tss2_MU_TPM2B_PRIVATE_Unmarshal(blob, length, &offset, &private);
    if (rc == TSS2_RC_SUCCESS && offset != length) rc = TSS2_MU_RC_BAD_SIZE;
    if (rc != TSS2_RC_SUCCESS) return rc;
    *stage = 2;
    ESYS_TR object = ESYS_TR_NONE;
    rc = Esys_Load(context, srk, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &private, &public, &object);
    if (rc != TSS2_RC_SUCCESS) return rc;
    ESYS_TR authorization = ESYS_TR_PASSWORD;
    if (mask) {
        *stage = 3;
        rc = dbkey_tpm_pcr_session(context, mask, TPM2_SE_POLICY, &authorization);
        if (rc != TSS2_RC_SUCCESS) {
            Esys_FlushContext(context, object);
            return rc;
        }
    }
    *stage = 4;
    TPM2B_SENSITIVE_DATA *data = NULL;
    rc = Esys_Unseal(context, object, authorization, ESYS_TR_NONE, ESYS_TR_NONE, &data);
    if (mask) Esys_FlushContext(context, authorization);
    Esys_FlushContext(context, object);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (data->size > capacity) {
        rc = TSS2_ESYS_RC_INSUFFICIENT_BUFFER;
    } else {
        memcpy(out, data->buffer, data->size);
        *written = data->size;
    }
    memset(data, 0, sizeof(*data));
    Esys_Free(data);
    return rc;
}

/// The Name of the storage root key (its name algorithm and the digest of its public area): it
/// tells a TPM, or an SRK, from another.
static inline TSS2_RC dbkey_tpm_srk_name(ESYS_CONTEXT *context, ESYS_TR srk, uint8_t *out, size_t capacity,
    size_t *written) {
    TPM2B_NAME *name = NULL;
    TSS2_RC rc = Esys_TR_GetName(context, srk, &name);
    if (rc != TSS2_RC_SUCCESS) return rc;
    if (name->size > capacity) {
        rc = TSS2_ESYS_RC_INSUFFICIENT_BUFFER;
    } else {
        memcpy(out, name->name, name->size);
        *written = name->size;
    }
    Esys_Free(name);
    return rc;
}
