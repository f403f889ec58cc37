// Only what Swift cannot say: SQLCipher declares sqlite3_key and sqlite3_rekey only when
// SQLITE_HAS_CODEC is defined before its header is included. The header is named by its
// sqlcipher/ folder so that the system's plain sqlite3.h can never be picked up instead.
#define SQLITE_HAS_CODEC 1
#include <sqlcipher/sqlite3.h>
