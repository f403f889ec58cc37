import DBKeyCLI
import SQLCipherKeyManager
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerAzure
import SQLCipherKeyManagerGCP
import SQLCipherKeyManagerPKCS11
import SQLCipherKeyManagerTPM
import SQLCipherKeyManagerVault

await DBKeyCommand.main(providers: [
    LocalKms.factory, AwsKms.factory, VaultTransit.factory, Pkcs11Kms.factory, CloudKms.factory,
    AzureKeyVault.factory, Tpm2Kms.factory,
])
