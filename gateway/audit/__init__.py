"""The trail: records, the writer and its hash chain, reading, export, verification, replay."""
