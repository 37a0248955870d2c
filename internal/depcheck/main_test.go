package depcheck
import (
 _ "github.com/redis/go-redis/v9"
 _ "github.com/jackc/pgx/v5/pgxpool"
 _ "modernc.org/sqlite"
 _ "github.com/aws/aws-sdk-go-v2/service/dynamodb"
 _ "github.com/aws/aws-sdk-go-v2/config"
 _ "github.com/aws/aws-sdk-go-v2/credentials"
 _ "github.com/truora/minidyn/server"
 _ "github.com/prometheus/client_golang/prometheus/promhttp"
 _ "go.yaml.in/yaml/v3"
 _ "go.uber.org/goleak"
 _ "golang.org/x/time/rate"
 _ "github.com/fsnotify/fsnotify"
 _ "github.com/go-redis/redis_rate/v10"
)
