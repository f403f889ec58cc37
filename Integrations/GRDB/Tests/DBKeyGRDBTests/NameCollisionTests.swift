// An app that imports GRDB and DBKey's core writes GRDB's five names unqualified: this file
// compiles only while DBKey declares none of them.
import GRDB
import SQLCipherKeyManager
import Testing

@Test("GRDB's DatabasePool, Row, Statement, DatabaseValue and ResultCode need no module name beside DBKey")
func grdbNamesAreUnqualified() throws {
    let queue = try DatabaseQueue()
    let rows: [Row] = try queue.read { db in try Row.fetchAll(db, sql: "SELECT 1 AS one") }
    let value: DatabaseValue = rows[0]["one"]
    let code: ResultCode = .SQLITE_OK
    let statementType = Statement.self
    let poolType = DatabasePool.self
    #expect(value == 1.databaseValue)
    #expect(code == ResultCode.SQLITE_OK)
    #expect("\(statementType)" == "Statement" && "\(poolType)" == "DatabasePool")
    // DBKey's own names for its SQL layer.
    #expect("\(ConnectionPool.self)" == "ConnectionPool" && "\(ResultRow.self)" == "ResultRow")
}
