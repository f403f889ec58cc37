import DBKeyCLI
import SQLCipherKeyManager
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerAzure
import SQLCipherKeyManagerGCP
import SQLCipherKeyManagerPKCS11
import SQLCipherKeyManagerTPM
import SQLCipherKeyManagerVault

await DBKeyCommand.main(providers: [
    LocalKms.factory, AWSKms.factory, VaultTransit.factory, Pkcs11Kms.factory, GoogleCloudKms.factory,
    AzureKeyVault.factory, Tpm2Kms.factory,
])
