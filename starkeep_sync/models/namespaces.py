"""Registered app namespaces: the responder's namespace store."""

from __future__ import annotations

from django.db import models


class AppNamespace(models.Model):
    app_id = models.CharField(max_length=255, unique=True)
    files_enabled = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.app_id


class AppTable(models.Model):
    namespace = models.ForeignKey(AppNamespace, on_delete=models.CASCADE, related_name="tables")
    name = models.CharField(max_length=255)
    pk_columns = models.JSONField(default=list)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["namespace", "name"], name="starkeep_table_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.namespace.app_id}.{self.name}"
