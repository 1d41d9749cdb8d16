from django.urls import path

from notifications.consumers import DeviceConsumer

websocket_urlpatterns = [path("ws/v1/", DeviceConsumer.as_asgi())]
