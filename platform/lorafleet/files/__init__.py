"""The files API's storage: tenant files in the blob store, under per-tenant quotas (fine-tuning and batches)."""

from lorafleet.files.service import FileObject, FilePage, FileService, StoredFile

__all__ = ["FileObject", "FilePage", "FileService", "StoredFile"]
