"""BusinessStatements: the SQL a business-table source runs (claim, take back, renew,
ack, nack, release, count), built once at construction from the dialect's fragments
(`quote`, `same`, `expired_sql`, `now_sql`); mixed into BusinessTableSource."""

from __future__ import annotations

from typing import Any

from ._tables import BusinessTableSpec


class BusinessStatements:
    """The statements of one business table. A settlement statement ends in `... AND `
    and is completed with `<key> IN (...)` for the rows it settles; it touches only rows
    still carrying the claim values (`_claimed`), so a row settled or changed by someone
    else meanwhile is left alone."""

    #: The server's current time as SQL, written into `lease_column`.
    now_sql = "CURRENT_TIMESTAMP"

    def quote(self, name: str, what: str) -> str:
        """`name` quoted as an identifier (`%` doubled for the driver's formatting)."""
        raise NotImplementedError

    def same(self, quoted_column: str) -> str:
        """A NULL-safe `column = %s` (a claim value of None matches a NULL column)."""
        raise NotImplementedError

    def expired_sql(self, quoted_column: str) -> str:
        """`column` is older than now minus `%s` microseconds (the server's clock)."""
        raise NotImplementedError

    def _build_statements(self, t: str, spec: BusinessTableSpec) -> None:
        """Build every statement for the quoted table `t` (at construction)."""
        self._t = t
        self._key = self.quote(spec.key, "key")
        # `%` in the developer's condition is literal SQL: doubled for the driver's formatting
        where = spec.where.replace("%", "%%")
        self._claimed = " AND ".join(self.same(self.quote(c, "claim column")) for c in spec.claim)
        self._claim_args = tuple(spec.claim.values())
        self._sql_select = (
            f"SELECT * FROM {t} WHERE ({where}) AND NOT ({self._claimed}) "
            f"ORDER BY {self._key} LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        self._sql_count = f"SELECT COUNT(*) FROM {t} WHERE ({where}) AND NOT ({self._claimed})"
        lease = attempts = ""
        if spec.lease_column is not None:
            lease_col = self.quote(spec.lease_column, "lease_column")
            lease = f", {lease_col} = {self.now_sql}"
            self._sql_select_expired = (
                f"SELECT * FROM {t} WHERE {self._claimed} AND {self.expired_sql(lease_col)} "
                f"ORDER BY {self._key} LIMIT %s FOR UPDATE SKIP LOCKED"
            )
            self._sql_renew = (
                f"UPDATE {t} SET {lease_col} = {self.now_sql} WHERE {self._claimed} AND "
            )
        if spec.attempts_column is not None:
            col = self.quote(spec.attempts_column, "attempts_column")
            attempts = f", {col} = {col} + 1"
            self._sql_count_attempt = f"UPDATE {t} SET {col} = {col} + 1 WHERE {self._claimed} AND "
        self._sql_claim = f"UPDATE {t} SET {self._assign(spec.claim)}{lease} WHERE {self._key} IN "
        # an expired lease was an execution whose worker died: it counts as an attempt
        self._sql_reclaim = f"UPDATE {t} SET {lease.lstrip(', ')}{attempts} WHERE {self._key} IN "
        # a settlement touches only rows still carrying the claim values (not yet settled)
        self._sql_ack = (
            f"UPDATE {t} SET {self._assign(spec.ack)}{attempts} WHERE {self._claimed} AND "
        )
        self._sql_nack = (
            f"UPDATE {t} SET {self._assign(spec.nack)}{attempts} WHERE {self._claimed} AND "
        )
        self._sql_release = f"UPDATE {t} SET {self._assign(spec.claim)} WHERE {self._claimed} AND "

    def _assign(self, values: dict[str, Any]) -> str:
        return ", ".join(f"{self.quote(column, 'column')} = %s" for column in values)

    @staticmethod
    def _in(count: int) -> str:
        return "(" + ", ".join(["%s"] * count) + ")"
