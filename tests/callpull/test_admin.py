"""The admin's words: model names read as English."""

from django.contrib import admin


def test_every_registered_model_has_a_plural_that_is_a_word():
    for model in admin.site._registry:  # noqa: SLF001  (the registry is how admin lists its models)
        plural = str(model._meta.verbose_name_plural)
        assert not plural.endswith(("ss", "sss")) or plural.endswith("address"), plural
