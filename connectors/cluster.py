"""How an index's collections spread over a clustered database: shards, replicas, and how
many replicas acknowledge a write. Checked up front (pydantic), mapped to each engine's own
parameters at collection creation, refused by embedded engines, which have one node."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClusterOptions(BaseModel):
    """shard_number: shards per collection (Qdrant ``shard_number``, Milvus ``num_shards``);
    replication_factor: copies of each shard (Qdrant ``replication_factor``; Milvus keeps one
    copy in storage and serves ``replica_number`` in-memory replicas, set when a collection
    is loaded); write_consistency_factor: replicas that must acknowledge a Qdrant write
    (at most ``replication_factor``; Milvus' writes are acknowledged by its log)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shard_number: int = Field(1, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)
    write_consistency_factor: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterOptions":
        if self.write_consistency_factor > self.replication_factor:
            raise ValueError(f"write_consistency_factor {self.write_consistency_factor} is more "
                             f"than replication_factor {self.replication_factor}: a write "
                             "cannot wait for replicas that do not exist")
        return self

    @property
    def default(self) -> bool:
        return self == ClusterOptions()

    def qdrant(self) -> dict:
        """Keyword arguments of qdrant_client's ``create_collection``."""
        return {"shard_number": self.shard_number, "replication_factor": self.replication_factor,
                "write_consistency_factor": self.write_consistency_factor}

    def milvus(self) -> dict:
        """Keyword arguments of pymilvus' ``create_collection``."""
        return {"num_shards": self.shard_number}
