"""Foundation-model teachers behind one small interface (see ``teachers.base``); heavy imports are deferred."""

from teachers.base import MissingExtraError, Teacher, TeacherError, TeacherInput, TeacherSpec
from teachers.registry import create_teacher, describe, list_teachers, register_teacher, teacher_class

__all__ = ["MissingExtraError", "Teacher", "TeacherError", "TeacherInput", "TeacherSpec",
           "create_teacher", "describe", "list_teachers", "register_teacher", "teacher_class"]
