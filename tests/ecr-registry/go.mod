module ecr-pull-secrets.test/ecr-registry

go 1.24
