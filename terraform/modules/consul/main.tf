# A Consul server cluster on EC2: an auto-scaling group of SERVER_COUNT instances in the
# private subnets that find each other by cloud auto-join (the instances' tag), as the
# client agent in every ECS task does. ACLs (default deny), gossip encryption, TLS on RPC
# and HTTPS with auto-encrypt for the client agents, Connect with the stack's CA: see
# server.sh.tftpl. The HTTPS API listens on loopback only; operators reach it through SSM
# port forwarding (scripts/aws-port-forward.sh consul); nothing is exposed outside the VPC.

data "aws_region" "current" {}

locals {
  join_tag_key = "plugworker-consul"
  # The region is explicit: Fargate tasks have no instance metadata to read it from.
  retry_join = "provider=aws region=${data.aws_region.current.name} tag_key=${local.join_tag_key} tag_value=${var.name}"
}

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

resource "aws_security_group" "servers" {
  name        = "${var.name}-consul-servers"
  description = "Consul servers: RPC (TLS) and gossip (encrypted) from inside the VPC; HTTPS on loopback only"
  vpc_id      = var.vpc_id

  ingress {
    description = "server RPC (TLS, verified both ways) and LAN gossip (TCP)"
    from_port   = 8300
    to_port     = 8302
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }
  ingress {
    description = "LAN gossip (UDP)"
    from_port   = 8301
    to_port     = 8302
    protocol    = "udp"
    cidr_blocks = [var.vpc_cidr]
  }
  egress {
    description = "HashiCorp's package repository (through NAT) and AWS APIs"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    description = "RPC, gossip and health checks to agents and servers in the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_iam_role" "server" {
  name = "${var.name}-consul-server"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# Cloud auto-join lists instances by tag; DescribeInstances cannot be scoped to resources.
resource "aws_iam_role_policy" "auto_join" {
  name = "consul-auto-join"
  role = aws_iam_role.server.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["ec2:DescribeInstances"]
      Resource = "*"
    }]
  })
}

# The mesh's secrets (modules/mesh): gossip key, CA, tokens and the mesh parameter.
resource "aws_iam_role_policy" "mesh_parameters" {
  name = "consul-mesh-parameters"
  role = aws_iam_role.server.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = "${var.parameter_arn_prefix}*"
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt"]
        Resource = var.kms_key_arn
        Condition = {
          StringEquals = { "kms:ViaService" = "ssm.${data.aws_region.current.name}.amazonaws.com" }
        }
      },
    ]
  })
}

# SSM: operators open shells and port forwards without SSH or public addresses.
resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.server.name
  policy_arn = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "server" {
  name = "${var.name}-consul-server"
  role = aws_iam_role.server.name
}

resource "aws_launch_template" "server" {
  name_prefix            = "${var.name}-consul-"
  image_id               = data.aws_ssm_parameter.al2023.value
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.servers.id]
  user_data = base64gzip(templatefile("${path.module}/server.sh.tftpl", {
    consul_version = var.consul_version
    server_count   = var.server_count
    retry_join     = local.retry_join
    datacenter     = var.name
    region         = data.aws_region.current.name
    prefix         = var.parameters_prefix
    mesh_script    = file("${path.module}/mesh.py")
  }))
  iam_instance_profile {
    arn = aws_iam_instance_profile.server.arn
  }
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  monitoring {
    enabled = true
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = 20
      volume_type = "gp3"
      encrypted   = true # with the account's EBS key (see main.tf of the root module)
    }
  }
  tag_specifications {
    resource_type = "instance"
    tags = {
      Name                 = "${var.name}-consul-server"
      (local.join_tag_key) = var.name
    }
  }
}

resource "aws_autoscaling_group" "servers" {
  name                = "${var.name}-consul-servers"
  min_size            = var.server_count
  max_size            = var.server_count
  desired_capacity    = var.server_count
  vpc_zone_identifier = var.subnet_ids
  health_check_type   = "EC2"
  launch_template {
    id      = aws_launch_template.server.id
    version = aws_launch_template.server.latest_version
  }
  # One server replaced at a time keeps the quorum.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 60
    }
  }
  tag {
    key                 = local.join_tag_key
    value               = var.name
    propagate_at_launch = true
  }
}
